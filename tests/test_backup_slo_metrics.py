"""The backup metrics the recovery objectives read (docs/slos.md), from real runs on PostgreSQL:

- pgvigil_backup_last_restore_duration_seconds: how long the last successful `verify --restore` took
  to restore and check the backup (the RTO objective);
- pgvigil_backup_verified_backup_timestamp_seconds: when the newest backup that passed verification
  finished (the RPO objective's backup age).
"""
from __future__ import annotations

import time

import pytest
from backup_support import SEED_SQL, backup_metrics, dbname_of

from exporter.backup.dump import run_backup
from exporter.backup.verify import verify_backup

RESTORE = "pgvigil_backup_last_restore_duration_seconds"
VERIFIED = "pgvigil_backup_verified_backup_timestamp_seconds"


@pytest.fixture
def app_db(cluster, fresh_db):
    cluster.execute(SEED_SQL, dbname_of(fresh_db))
    return fresh_db


def test_restore_test_exports_its_duration_and_the_verified_backup(app_db, tmp_path):
    entry = run_backup(app_db, "primary", tmp_path, progress=False)
    assert RESTORE not in backup_metrics(tmp_path, "primary") and VERIFIED not in backup_metrics(tmp_path, "primary")

    started = time.monotonic()
    result = verify_backup(tmp_path, restore=True, dsn=app_db)
    wall = time.monotonic() - started

    assert result.success, result.failure
    metrics = backup_metrics(tmp_path, "primary")
    # the restore and the row-count comparison, not the checksum and archive checks before them
    assert 0 < metrics[RESTORE] < wall
    assert metrics[RESTORE] == pytest.approx(result.restore_seconds)
    assert metrics[VERIFIED] == entry["finished"]


def test_checks_without_restore_leave_the_restore_time_alone(app_db, tmp_path):
    first = run_backup(app_db, "primary", tmp_path, progress=False)
    assert verify_backup(tmp_path, restore=True, dsn=app_db).success
    restored = backup_metrics(tmp_path, "primary")[RESTORE]
    second = run_backup(app_db, "primary", tmp_path, progress=False)

    # a quick verification (checksums, archive listing) passes in a moment: it says nothing of the RTO
    assert verify_backup(tmp_path).success
    metrics = backup_metrics(tmp_path, "primary")
    assert metrics[RESTORE] == restored
    assert metrics[VERIFIED] == second["finished"] > first["finished"]


def test_a_backup_that_fails_verification_is_not_the_verified_one(app_db, tmp_path):
    first = run_backup(app_db, "primary", tmp_path, progress=False)
    assert verify_backup(tmp_path).success
    second = run_backup(app_db, "primary", tmp_path, progress=False)
    dump = tmp_path / second["files"]["dump"]
    dump.write_bytes(dump.read_bytes()[:200])

    assert not verify_backup(tmp_path).success
    # the restorable point is still the first backup: its age is what the RPO objective judges
    assert backup_metrics(tmp_path, "primary")[VERIFIED] == first["finished"]
