"""pgvigil backup run + verify against a real PostgreSQL, and the metrics that report them."""
from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from backup_support import EXPECTED_ROWS, SEED_SQL, backup_metrics, dbname_of, hold_lock, wait_for_blocked_pg_dump

from exporter.backup.dump import run_backup
from exporter.backup.pgclient import BackupError, client_program
from exporter.backup.state import StateFile
from exporter.backup.status import backup_statuses
from exporter.backup.verify import SCRATCH_PREFIX, verify_backup


@pytest.fixture
def app_db(cluster, fresh_db):
    cluster.execute(SEED_SQL, dbname_of(fresh_db))
    return fresh_db


def scratch_databases(cluster) -> list[str]:
    return [r[0] for r in cluster.execute(f"SELECT datname FROM pg_database WHERE datname LIKE '{SCRATCH_PREFIX}%'")]


def test_run_writes_dump_checksum_and_exact_manifest(app_db, tmp_path):
    entry = run_backup(app_db, "primary", tmp_path, progress=False)

    dump = tmp_path / entry["files"]["dump"]
    assert entry["status"] == "complete"
    assert dump.read_bytes()[:5] == b"PGDMP"  # custom format archive
    assert entry["size_bytes"] == dump.stat().st_size > 0
    digest = hashlib.sha256(dump.read_bytes()).hexdigest()
    assert (tmp_path / entry["files"]["checksum"]).read_text() == f"{digest}  {dump.name}\n"
    assert subprocess.run(["sha256sum", "-c", entry["files"]["checksum"]], cwd=tmp_path,
                          capture_output=True).returncode == 0

    manifest = json.loads((tmp_path / entry["files"]["manifest"]).read_text())
    assert manifest["target"] == "primary"
    assert manifest["database"] == dbname_of(app_db)
    assert manifest["server_version_num"] >= 150000
    assert manifest["sha256"] == digest and manifest["size_bytes"] == dump.stat().st_size
    rows = {(t["schema"], t["name"]): t["rows"] for t in manifest["tables"]}
    assert rows == EXPECTED_ROWS
    estimates = {(t["schema"], t["name"]): t["estimated_rows"] for t in manifest["tables"]}
    assert estimates[("public", "customers")] == 1200  # ANALYZEd: reltuples is exact here
    # Nothing else: no partial file, no temporary state file.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*entry["files"].values(), "pgvigil-backup-state.json", ".pgvigil-backup-state.lock"])


def test_manifest_counts_and_dump_share_one_snapshot(cluster, app_db, tmp_path):
    """Rows committed while pg_dump runs are in neither the dump nor the manifest's counts."""
    db = dbname_of(app_db)
    lock = hold_lock(cluster, db, "empty_table")  # pg_dump takes its snapshot, then waits here
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_backup, app_db, "primary", tmp_path, False)
        wait_for_blocked_pg_dump(cluster, db)
        cluster.execute("INSERT INTO events SELECT date '2024-03-01', 'late' FROM generate_series(1, 50)", db)
        lock.close()
        entry = running.result(timeout=60)

    manifest = json.loads((tmp_path / entry["files"]["manifest"]).read_text())
    assert {(t["schema"], t["name"]): t["rows"] for t in manifest["tables"]} == EXPECTED_ROWS
    result = verify_backup(tmp_path, restore=True, dsn=app_db)
    assert result.success, result.failure


def test_verify_with_real_restore_matches_row_counts(cluster, app_db, tmp_path):
    run_backup(app_db, "primary", tmp_path, progress=False)

    result = verify_backup(tmp_path, restore=True, dsn=app_db,
                           sanity_query="SELECT count(*) = 1200 FROM customers")

    assert result.success, result.failure
    assert "row counts match the manifest for 6 tables" in result.checks
    assert "sanity query returned True" in result.checks
    assert scratch_databases(cluster) == []
    [status] = backup_statuses(tmp_path)
    assert (status.condition, status.good) == ("restored", True)
    metrics = backup_metrics(tmp_path, "primary")
    assert metrics["pgvigil_backup_last_verify_success"] == 1.0
    assert metrics["pgvigil_backup_last_verify_timestamp_seconds"] >= status.finished


def test_metrics_after_successful_runs(app_db, tmp_path):
    first = run_backup(app_db, "primary", tmp_path, progress=False)
    assert "pgvigil_backup_previous_size_bytes" not in backup_metrics(tmp_path, "primary")
    second = run_backup(app_db, "primary", tmp_path, progress=False)

    metrics = backup_metrics(tmp_path, "primary")
    assert metrics["pgvigil_backup_last_success_timestamp_seconds"] == second["finished"]
    assert metrics["pgvigil_backup_last_size_bytes"] == second["size_bytes"]
    assert metrics["pgvigil_backup_previous_size_bytes"] == first["size_bytes"]
    assert metrics["pgvigil_backup_last_duration_seconds"] == pytest.approx(second["finished"] - second["started"])
    assert metrics["pgvigil_backup_last_run_success"] == 1.0
    assert metrics["pgvigil_backup_failures_total"] == 0.0
    assert "pgvigil_backup_last_verify_success" not in metrics  # never verified: absent, not 0
    assert backup_metrics(tmp_path, "other") == {"pgvigil_backup_configured": 1.0, "pgvigil_backup_failures_total": 0.0,
                                                 "pgvigil_backup_state_errors_total": 0.0}


def test_flipped_byte_fails_verification(app_db, tmp_path):
    entry = run_backup(app_db, "primary", tmp_path, progress=False)
    dump = tmp_path / entry["files"]["dump"]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))

    result = verify_backup(tmp_path)

    assert not result.success
    assert result.failure.startswith(f"checksum mismatch: {dump.name} has sha256 ")
    [status] = backup_statuses(tmp_path)
    assert (status.condition, status.good) == ("verify-failed", False)
    assert backup_metrics(tmp_path, "primary")["pgvigil_backup_last_verify_success"] == 0.0


def test_truncated_archive_fails_even_with_matching_checksum(app_db, tmp_path):
    """pg_restore --list catches a damaged archive whose checksum was recomputed."""
    entry = run_backup(app_db, "primary", tmp_path, progress=False)
    dump = tmp_path / entry["files"]["dump"]
    dump.write_bytes(dump.read_bytes()[:200])
    digest = hashlib.sha256(dump.read_bytes()).hexdigest()
    with StateFile(tmp_path).update() as state:
        state["backups"][0].update(sha256=digest, size_bytes=200)
    (tmp_path / entry["files"]["checksum"]).write_text(f"{digest}  {dump.name}\n")
    manifest_path = tmp_path / entry["files"]["manifest"]
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "sha256": digest}))

    result = verify_backup(tmp_path)

    assert not result.success
    assert result.failure.startswith(f"pg_restore --list cannot read {dump.name}")


def test_restore_reports_row_count_mismatch_and_drops_scratch(cluster, app_db, tmp_path):
    entry = run_backup(app_db, "primary", tmp_path, progress=False)
    manifest_path = tmp_path / entry["files"]["manifest"]
    manifest = json.loads(manifest_path.read_text())
    for table in manifest["tables"]:
        if table["name"] == "orders":
            table["rows"] = 3001
    manifest_path.write_text(json.dumps(manifest))

    result = verify_backup(tmp_path, restore=True, dsn=app_db)

    assert result.failure == "row count mismatch in public.orders: restored 3000, the manifest recorded 3001"
    assert scratch_databases(cluster) == []
    assert backup_metrics(tmp_path, "primary")["pgvigil_backup_last_verify_success"] == 0.0


@pytest.mark.parametrize("query, message", [
    ("SELECT count(*) > 5000 FROM customers", "sanity query returned False, expected a true value"),
    ("SELECT 1 FROM customers WHERE false", "sanity query returned 'no row', expected a true value"),
    ("SELECT * FROM no_such_table", 'sanity query failed: relation "no_such_table" does not exist'),
])
def test_failing_sanity_query_fails_verification(cluster, app_db, tmp_path, query, message):
    run_backup(app_db, "primary", tmp_path, progress=False)
    result = verify_backup(tmp_path, restore=True, dsn=app_db, sanity_query=query)
    assert result.failure.splitlines()[0] == message
    assert scratch_databases(cluster) == []


def test_failed_run_leaves_no_backup_and_counts_as_failure(cluster, tmp_path):
    cluster.execute("DO $$ BEGIN CREATE ROLE backup_pw LOGIN SUPERUSER PASSWORD 's3cr3t-pw'; "
                    "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    dsn = cluster.dsn("no_such_db", "backup_pw", "s3cr3t-pw")

    with pytest.raises(BackupError) as info:
        run_backup(dsn, "primary", tmp_path, progress=False)

    assert 'database "no_such_db" does not exist' in str(info.value)
    assert "s3cr3t-pw" not in str(info.value)
    assert "s3cr3t-pw" not in (tmp_path / "pgvigil-backup-state.json").read_text()
    assert not list(tmp_path.glob("*.dump*"))
    [status] = backup_statuses(tmp_path)
    assert (status.condition, status.good) == ("failed", False)
    metrics = backup_metrics(tmp_path, "primary")
    assert metrics["pgvigil_backup_last_run_success"] == 0.0
    assert metrics["pgvigil_backup_failures_total"] == 1.0
    assert "pgvigil_backup_last_success_timestamp_seconds" not in metrics


def test_password_goes_to_pg_dump_by_environment_not_argv(cluster, app_db, tmp_path):
    cluster.execute("DO $$ BEGIN CREATE ROLE backup_pw LOGIN SUPERUSER PASSWORD 's3cr3t-pw'; "
                    "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    dsn = cluster.dsn(dbname_of(app_db), "backup_pw", "s3cr3t-pw")
    entry = run_backup(dsn, "primary", tmp_path, progress=False)
    assert entry["status"] == "complete"
    assert "s3cr3t-pw" not in (tmp_path / "pgvigil-backup-state.json").read_text()


def test_verify_without_a_backup_is_a_clear_error(tmp_path):
    with pytest.raises(BackupError, match=f"^no complete backup of target primary in {tmp_path}$"):
        verify_backup(tmp_path, target="primary")


def test_pg_dump_found():
    assert client_program("pg_dump").endswith("pg_dump")


def test_the_documented_backup_role_restores_a_database_with_pg_stat_statements(cluster, app_db, tmp_path):
    """docs/backups.md's role (LOGIN CREATEDB, pg_read_all_data; no superuser) backs up and test-restores a
    database where pg_stat_statements is installed: the extension (untrusted: only a superuser may create it)
    is left out of the restore and said so; a trusted one (pgcrypto) is created by the role, the scratch
    database's owner, so the table whose default calls it restores."""
    db = dbname_of(app_db)
    role = "backup_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN CREATEDB; GRANT pg_read_all_data TO {role}")
    cluster.execute("CREATE SCHEMA monitoring; CREATE EXTENSION pg_stat_statements WITH SCHEMA monitoring;"
                    "CREATE SCHEMA crypto; CREATE EXTENSION pgcrypto WITH SCHEMA crypto;"
                    "CREATE TABLE tokens (id int, token bytea NOT NULL DEFAULT crypto.gen_random_bytes(8));"
                    "INSERT INTO tokens (id) SELECT generate_series(1, 5);"
                    "CREATE FUNCTION tokens_issued() RETURNS bigint LANGUAGE sql AS 'SELECT 5'", db)
    dsn = cluster.dsn(db, user=role)
    try:
        run_backup(dsn, "primary", tmp_path, progress=False)
        result = verify_backup(tmp_path, restore=True, dsn=dsn, sanity_query="SELECT count(*) = 5 FROM tokens")

        assert result.success, result.failure
        # and no word of a superuser: the function restored with this role's privileges only
        assert result.notes == ["extension pg_stat_statements not restored: only a superuser may create it "
                                "(an untrusted extension); its objects are not checked"]
        assert "row counts match the manifest for 7 tables" in result.checks
        assert scratch_databases(cluster) == []
        [status] = backup_statuses(tmp_path)
        assert status.condition == "restored"
    finally:
        cluster.execute(f"DROP ROLE {role}")


def test_a_view_on_an_extension_the_role_may_not_create_fails_the_restore_naming_it(cluster, app_db, tmp_path):
    db = dbname_of(app_db)
    role = "backup_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN CREATEDB; GRANT pg_read_all_data TO {role}")
    cluster.execute("CREATE EXTENSION pg_stat_statements;"
                    "CREATE VIEW slow AS SELECT query FROM pg_stat_statements WHERE mean_exec_time > 1000", db)
    dsn = cluster.dsn(db, user=role)
    try:
        run_backup(dsn, "primary", tmp_path, progress=False)
        result = verify_backup(tmp_path, restore=True, dsn=dsn)

        assert result.failure is not None and result.failure.startswith("pg_restore into pgvigil_verify_")
        assert 'ERROR:  relation "public.pg_stat_statements" does not exist' in result.failure, result.failure
        assert result.failure.endswith(f"(left out because role {role} may not restore them: extension "
                                       "pg_stat_statements; restore as a role that may, e.g. verify --restore "
                                       "--dsn of a staging server's superuser)")
        assert scratch_databases(cluster) == []
    finally:
        cluster.execute(f"DROP ROLE {role}")


# A tenant's look-alikes of the catalog's functions: on public (a better match than pg_catalog's variadic
# format()), and in a schema the database puts ahead of pg_catalog. Each one fails the statement it is
# called from, so a backup that calls one fails; a real tenant's would quietly run as the backup's role.
LOOK_ALIKES = """
CREATE FUNCTION public.format(text, name, name) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'the tenant''s format() ran as %', current_user; END $$;
CREATE SCHEMA trap;
CREATE FUNCTION trap.current_setting(text) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'the tenant''s current_setting() ran as %', current_user; END $$;
CREATE FUNCTION trap.tally(bigint) RETURNS bigint LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'the tenant''s count(*) ran as %', current_user; END $$;
CREATE AGGREGATE trap.count(*) (SFUNC = trap.tally, STYPE = bigint, INITCOND = 0);
"""


def test_a_tenants_look_alike_functions_are_never_called_by_the_backup(cluster, app_db, tmp_path):
    """The backup's own SQL resolves names in pg_catalog only, whatever the database's search_path and
    public hold; the user's sanity query still finds the user's tables."""
    db = dbname_of(app_db)
    cluster.execute(LOOK_ALIKES, db)
    cluster.execute(f'ALTER DATABASE "{db}" SET search_path = trap, pg_catalog, public')
    entry = run_backup(app_db, "primary", tmp_path, progress=False)
    manifest = json.loads((tmp_path / entry["files"]["manifest"]).read_text())
    assert {(t["schema"], t["name"]): t["rows"] for t in manifest["tables"]} == EXPECTED_ROWS
    result = verify_backup(tmp_path, restore=True, dsn=app_db, sanity_query="SELECT count(*) = 1200 FROM customers")
    assert result.success, result.failure
    assert "sanity query returned True" in result.checks
    # restored as the cluster's superuser: the planted functions could have run as one, and the run says so
    assert [note for note in result.notes if note.startswith("restored as superuser")] == [
        "restored as superuser postgres: the archive's 4 functions, procedures and aggregates could run with every "
        "privilege (check constraints, index expressions); verify a database whose owner you do not trust as a "
        "role that is not a superuser (docs/backups.md)"]
