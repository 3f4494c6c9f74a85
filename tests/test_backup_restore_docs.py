"""The restore procedures of docs/backups.md, run as written against real PostgreSQL."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from backup_support import SEED_SQL, dbname_of

from exporter.backup.dump import run_backup
from exporter.backup.pgclient import client_program
from exporter.dev.throwaway import ThrowawayCluster


def pg(cluster, program: str, *args: str) -> subprocess.CompletedProcess:
    """A client program against the cluster, the way a user would type it."""
    argv = [client_program(program), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True)


@pytest.fixture
def backup(cluster, fresh_db, tmp_path):
    cluster.execute(SEED_SQL, dbname_of(fresh_db))
    entry = run_backup(fresh_db, "primary", tmp_path, progress=False)
    manifest = json.loads((tmp_path / entry["files"]["manifest"]).read_text())
    return tmp_path / entry["files"]["dump"], manifest


def test_full_database_restore_next_to_the_original(cluster, backup):
    dump, manifest = backup
    restored = manifest["database"] + "_restored"
    pg(cluster, "createdb", restored)
    try:
        pg(cluster, "pg_restore", f"--dbname={restored}", "--jobs=4", "--exit-on-error", str(dump))
        for table in manifest["tables"]:
            [(count,)] = cluster.execute(f'SELECT count(*) FROM ONLY "{table["schema"]}"."{table["name"]}"', restored)
            assert count == table["rows"], table
    finally:
        cluster.execute(f'DROP DATABASE IF EXISTS "{restored}"')


def test_one_table_rescue(cluster, backup):
    dump, manifest = backup
    pg(cluster, "createdb", "rescue")
    try:
        pg(cluster, "pg_restore", "--dbname=rescue", "--no-owner", "--schema=public", "--table=orders", str(dump))
        assert cluster.execute("SELECT count(*) FROM public.orders", "rescue") == [(3000,)]
        assert cluster.execute("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
                               "'information_schema')", "rescue") == [(1,)]
    finally:
        cluster.execute("DROP DATABASE IF EXISTS rescue")


def as_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, user.pw_uid, user.pw_gid)


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def wal_archive():
    """A directory the server (running as postgres when we are root) can write; pytest's tmp_path is 0700 root."""
    path = Path(tempfile.mkdtemp(prefix="pgvigil-wal-archive-"))
    as_postgres(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_point_in_time_recovery_as_documented(tmp_path, wal_archive):
    archive = wal_archive
    archive_command = (f"test ! -f {archive}/%f && cp %p {archive}/%f.tmp && sync {archive}/%f.tmp "
                       f"&& mv {archive}/%f.tmp {archive}/%f")
    settings = {"wal_level": "replica", "archive_mode": "on", "archive_command": f"'{archive_command}'",
                "archive_timeout": "300"}
    with ThrowawayCluster(settings=settings, preload=()) as primary:
        primary.execute("CREATE TABLE payments (id int, amount numeric)")
        primary.execute("INSERT INTO payments SELECT g, g FROM generate_series(1, 100) g")
        base = tmp_path / "base"
        pg(primary, "pg_basebackup", f"--pgdata={base}", "--format=tar", "--gzip", "--wal-method=stream",
           "--checkpoint=fast")
        primary.execute("INSERT INTO payments SELECT g, g FROM generate_series(101, 150) g")
        [(target,)] = primary.execute("SELECT clock_timestamp()::text")
        time.sleep(0.05)
        primary.execute("DROP TABLE payments")  # the mistake
        [(last_wal,)] = primary.execute("SELECT pg_walfile_name(pg_switch_wal())")
        wait_for(lambda: (archive / last_wal).exists(), "the WAL segment with the mistake to be archived")

    recovered = ThrowawayCluster(preload=())
    try:
        datadir = recovered.datadir
        datadir.mkdir(mode=0o700)
        with tarfile.open(base / "base.tar.gz") as tar:
            tar.extractall(datadir)
        with tarfile.open(base / "pg_wal.tar.gz") as tar:
            tar.extractall(datadir / "pg_wal")
        with open(datadir / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {recovered.port}\nunix_socket_directories = '{recovered.base}'\n"
                       "archive_mode = off\n"
                       f"restore_command = 'cp {archive}/%f %p'\n"
                       f"recovery_target_time = '{target}'\n"
                       "recovery_target_action = 'promote'\n")
        (datadir / "recovery.signal").touch()
        as_postgres(recovered.base)
        recovered.start()
        wait_for(lambda: recovered.execute("SELECT pg_is_in_recovery()") == [(False,)], "the end of recovery")
        # Not 'pause': paused at the target, the replayed DROP's lock is still held and this query would hang.
        assert recovered.execute("SELECT count(*), max(id) FROM payments") == [(150, 150)]
        recovered.execute("INSERT INTO payments VALUES (151, 1)")  # writable again, on a new timeline
    finally:
        recovered.cleanup()
