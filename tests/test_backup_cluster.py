"""`backup:` with a `databases: all` target: every database the target names is backed up on its own, each
verified, with metrics per database, and the cluster's globals; never a green backup of the DSN's database
alone. A cluster of its own, so `all` means exactly the databases made here."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from backup_support import EXPECTED_ROWS, SEED_SQL
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.backup.metrics import BackupStateCollector
from exporter.backup.state import StateFile
from exporter.backup.verify import SCRATCH_PREFIX
from exporter.cli import main
from exporter.dev.throwaway import ThrowawayCluster


@pytest.fixture(scope="module")
def server():
    with ThrowawayCluster() as pg:
        # the documented backup role, and a monitoring role (the exporter's, pg_monitor only)
        pg.execute("CREATE ROLE backup LOGIN CREATEDB PASSWORD 'backup-pw'; GRANT pg_read_all_data TO backup;"
                   "CREATE ROLE monitor LOGIN PASSWORD 'monitor-pw'; GRANT pg_monitor TO monitor")
        for database in ("app", "tenant", "secret"):
            pg.execute(f"CREATE DATABASE {database}")
        pg.execute("CREATE DATABASE tmpl IS_TEMPLATE true")
        pg.execute("CREATE DATABASE closed ALLOW_CONNECTIONS false")
        pg.execute("REVOKE CONNECT ON DATABASE secret FROM PUBLIC")
        pg.execute(SEED_SQL, "app")
        pg.execute("CREATE SCHEMA stats; CREATE EXTENSION pg_stat_statements WITH SCHEMA stats;"
                   "CREATE TABLE notes (n int); INSERT INTO notes SELECT generate_series(1, 42)", "tenant")
        yield pg


def pgvigil(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["backup", *args])
    return result.exit_code, result.output


def config(tmp_path: Path, dsn: str, exclude: str = "") -> Path:
    path = tmp_path / "pgvigil.yaml"
    path.write_text(f"targets:\n  prod:\n    dsn: {dsn}\n    databases: all\n{exclude}"
                    f"collectors: []\nbackup:\n  dir: {tmp_path / 'backups'}\n"
                    "  sanity_query: SELECT count(*) = 1200 FROM customers\n")
    return path


def metrics(directory: Path) -> dict[tuple[str, str], float]:
    """(sample name, datname) -> value, for the exporter's backup metrics of target prod."""
    registry = CollectorRegistry()
    registry.register(BackupStateCollector(directory, "prod"))
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            assert sample.labels["target"] == "prod"
            found[sample.name, sample.labels.get("datname", "")] = sample.value
    return found


def test_every_database_and_the_globals_are_backed_up_verified_and_exported(server, tmp_path):
    path = config(tmp_path, server.dsn("app", user="backup"), "    exclude_databases: [secret]\n")
    backups = tmp_path / "backups"

    code, out = pgvigil("run", "--config", str(path))

    assert code == 0, out
    lines = out.splitlines()
    made = sorted(line.split(":")[0] for line in lines if line.startswith("backup "))
    assert [name.rsplit("-", 1)[0] for name in made] == [
        "backup prod-globals", "backup prod_app", "backup prod_postgres", "backup prod_tenant"]
    assert "not backed up: database secret: excluded by the target's databases/exclude_databases" in lines
    assert "not backed up: database tmpl: a template" in lines
    assert "not backed up: database template0: a template" in lines
    assert "not backed up: database closed: does not allow connections (datallowconn = false)" in lines
    assert lines[-1] == "prod: 3 of 3 databases backed up, globals backed up"

    state = StateFile(backups).read()
    assert state["targets"]["prod"]["databases"] == ["app", "postgres", "tenant"]
    manifests = {b["target"]: json.loads((backups / b["files"]["manifest"]).read_text())
                 for b in state["backups"] if b.get("kind") != "globals"}
    assert {target: m["database"] for target, m in manifests.items()} == {
        "prod/app": "app", "prod/postgres": "postgres", "prod/tenant": "tenant"}
    assert {(t["schema"], t["name"]): t["rows"] for t in manifests["prod/app"]["tables"]} == EXPECTED_ROWS
    assert [(t["name"], t["rows"]) for t in manifests["prod/tenant"]["tables"]] == [("notes", 42)]
    [globals_entry] = [b for b in state["backups"] if b.get("kind") == "globals"]
    dumped = (backups / globals_entry["files"]["dump"]).read_text()
    assert "CREATE ROLE backup;" in dumped and "CREATE ROLE monitor;" in dumped
    assert "PASSWORD 'SCRAM-SHA-256" in dumped  # pg_read_all_data reads pg_authid: passwords are in
    assert "note" not in globals_entry

    code, out = pgvigil("verify", "--config", str(path), "--restore")

    assert code == 0, out
    assert out.count("  ok      row counts match the manifest for ") == 3
    assert "  ok      row counts match the manifest for 6 tables" in out
    assert out.count("  ok      sanity query returned True") == 1  # in the DSN's database's restore only
    assert "  note    extension pg_stat_statements not restored: only a superuser may create it" in out
    assert "  ok      pg_dumpall output, complete (" in out
    assert "  note    the globals are not test-restored: roles and tablespaces belong to the whole server" in out
    assert not server.execute(f"SELECT datname FROM pg_database WHERE datname LIKE '{SCRATCH_PREFIX}%'")

    values = metrics(backups)
    for datname in ("", "app", "postgres", "tenant"):  # "": the globals
        assert values["pgvigil_backup_configured", datname] == 1.0
        assert values["pgvigil_backup_last_run_success", datname] == 1.0
        assert values["pgvigil_backup_last_verify_success", datname] == 1.0
        assert values["pgvigil_backup_failures_total", datname] == 0.0
    assert {datname for name, datname in values if name == "pgvigil_backup_last_restore_duration_seconds"} == {
        "app", "postgres", "tenant"}

    code, out = pgvigil("status", "--config", str(path), "--target", "prod")
    assert code == 0 and len(out.splitlines()) == 5, out

    # The globals restore as docs/backups.md says: psql, as a superuser, on a new server.
    with ThrowawayCluster(preload=()) as spare:
        psql = subprocess.run([str(spare.bindir / "psql"), "-X", "-q", "-d", spare.dsn(), "-f",
                               str(backups / globals_entry["files"]["dump"])], capture_output=True, text=True)
        assert psql.returncode == 0, psql.stderr
        assert spare.execute("SELECT rolname, rolcreatedb, pg_has_role(rolname, 'pg_read_all_data', 'MEMBER') "
                             "FROM pg_roles WHERE rolname IN ('backup', 'monitor') ORDER BY 1") == [
            ("backup", True, True), ("monitor", False, False)]


def test_the_monitoring_role_fails_loudly_where_it_cannot_back_up(server, tmp_path):
    """The DSN's role is the exporter's (pg_monitor): its own empty database backs up, but a database with
    tables it may not read, one it may not connect to, and the globals' missing passwords are each said; the run
    fails: never the DSN's database alone, in green."""
    path = config(tmp_path, server.dsn("postgres", user="monitor"))
    backups = tmp_path / "backups"

    code, out = pgvigil("run", "--config", str(path))

    assert code == 1, out
    lines = out.splitlines()
    assert "FAILED prod/app: role monitor cannot read 8 table(s) or sequence(s) pg_dump must dump" in out
    assert "FAILED prod/tenant: role monitor cannot read 1 table(s) or sequence(s) pg_dump must dump" in out
    assert ("FAILED prod/secret: role monitor may not connect to database secret: GRANT CONNECT ON DATABASE ... "
            "TO monitor, or leave it out with exclude_databases") in lines
    assert any(line.startswith("backup prod_postgres-") for line in lines)
    assert lines[-1] == "prod: 1 of 4 databases backed up, globals backed up"
    assert ("  note: role passwords not included: role monitor may not read pg_authid (a superuser or "
            "pg_read_all_data may); set them again after a restore") in lines

    values = metrics(backups)
    assert values["pgvigil_backup_last_run_success", "app"] == 0.0
    assert values["pgvigil_backup_last_run_success", "secret"] == 0.0
    assert values["pgvigil_backup_failures_total", "secret"] == 1.0
    assert values["pgvigil_backup_last_run_success", "postgres"] == 1.0
    assert values["pgvigil_backup_last_run_success", ""] == 1.0
    assert ("pgvigil_backup_last_success_timestamp_seconds", "app") not in values

    code, out = pgvigil("verify", "--config", str(path))
    assert code == 1
    assert "  FAILED  no complete backup of prod/app: its last run failed: role monitor cannot read" in out
