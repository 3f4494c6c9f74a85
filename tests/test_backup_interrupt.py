"""A dump killed midway never leaves something that status calls a good backup."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backup_support import SEED_SQL, backup_metrics, dbname_of, hold_lock, wait_for_blocked_pg_dump

from exporter.backup.prune import prune
from exporter.backup.state import StateFile
from exporter.backup.status import backup_statuses

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def app_db(cluster, fresh_db):
    cluster.execute(SEED_SQL, dbname_of(fresh_db))
    return fresh_db


def start_backup_process(dsn: str, directory: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "exporter.backup.cli", "run", "--dsn", dsn, "--target", "primary",
                             "--dir", str(directory), "--no-progress"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_gone(cluster, dbname: str) -> None:
    deadline = time.monotonic() + 30
    while cluster.execute(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                          f"AND datname = '{dbname}'")[0][0]:
        assert time.monotonic() < deadline, "pg_dump outlived the killed backup process"
        time.sleep(0.05)


def test_sigkill_of_the_backup_process_leaves_no_good_backup(cluster, app_db, tmp_path):
    db = dbname_of(app_db)
    lock = hold_lock(cluster, db, "orders")
    proc = start_backup_process(app_db, tmp_path)
    try:
        wait_for_blocked_pg_dump(cluster, db)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        lock.close()
    wait_gone(cluster, db)  # pg_dump dies with its parent instead of finishing the dump

    assert not list(tmp_path.glob("*.dump"))
    [status] = backup_statuses(tmp_path)
    assert (status.condition, status.good) == ("interrupted", False)
    metrics = backup_metrics(tmp_path, "primary")
    assert metrics["pgvigil_backup_last_run_success"] == 0.0
    assert metrics["pgvigil_backup_failures_total"] == 1.0
    assert "pgvigil_backup_last_success_timestamp_seconds" not in metrics

    # The next writer records it once; prune removes the partial file the killed run left.
    decisions = prune(tmp_path, keep_days=None, keep_last=1)
    assert [(d.keep, d.reason) for d in decisions] == [(False, "interrupted run")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pgvigil-backup-state.lock", "pgvigil-backup-state.json"]
    state = StateFile(tmp_path).read()
    assert state["backups"] == [] and state["targets"]["primary"]["failures_total"] == 1
    assert backup_metrics(tmp_path, "primary")["pgvigil_backup_failures_total"] == 1.0


def test_sigkill_of_pg_dump_is_a_recorded_failure(cluster, app_db, tmp_path):
    db = dbname_of(app_db)
    lock = hold_lock(cluster, db, "orders")
    proc = start_backup_process(app_db, tmp_path)
    try:
        wait_for_blocked_pg_dump(cluster, db)
        [pg_dump] = [pid for pid in children_of(proc.pid) if "pg_dump" in Path(f"/proc/{pid}/cmdline").read_text()]
        os.kill(pg_dump, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        lock.close()

    assert proc.returncode == 1
    assert err.strip() == "Error: pg_dump failed (killed by signal 9)"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pgvigil-backup-state.lock", "pgvigil-backup-state.json"]
    [status] = backup_statuses(tmp_path)
    assert (status.condition, status.good) == ("failed", False)
    metrics = backup_metrics(tmp_path, "primary")
    assert metrics["pgvigil_backup_last_run_success"] == 0.0
    assert metrics["pgvigil_backup_failures_total"] == 1.0


def test_sigterm_cleans_up_like_a_failure(cluster, app_db, tmp_path):
    db = dbname_of(app_db)
    lock = hold_lock(cluster, db, "orders")
    proc = start_backup_process(app_db, tmp_path)
    try:
        wait_for_blocked_pg_dump(cluster, db)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        lock.close()
    assert proc.returncode == 1
    assert err.strip() == "Error: stopped by signal 15"
    [status] = backup_statuses(tmp_path)
    assert status.condition == "failed"
    assert not [p for p in tmp_path.iterdir() if "dump" in p.name]
