"""A tenant holding a lock on one of its tables cannot hold up `pgvigil backup run`: pg_dump and pgvigil's
own backup session wait for a lock at most pgclient.LOCK_WAIT_SECONDS, so that database's backup fails,
saying why, and a `databases:` target's other databases are backed up."""
from __future__ import annotations

import time
import uuid

import psycopg
from click.testing import CliRunner

from exporter.backup import pgclient
from exporter.cli import main


def test_a_tenants_lock_fails_its_databases_backup_and_the_others_are_made(cluster, tmp_path, monkeypatch):
    """Before: `LOCK TABLE ... IN ACCESS EXCLUSIVE MODE` held in an open transaction kept pg_dump waiting
    forever (30 s measured, then killed), and every database after it and the globals with it."""
    monkeypatch.setattr(pgclient, "LOCK_WAIT_SECONDS", 2)
    prefix = "t_" + uuid.uuid4().hex[:8]
    for suffix in ("a_tenant", "b_other"):
        cluster.create_database(f"{prefix}_{suffix}")
        cluster.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)", f"{prefix}_{suffix}")
    holder = psycopg.connect(cluster.dsn(f"{prefix}_a_tenant"))
    try:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        config_file = tmp_path / "pgvigil.yaml"
        config_file.write_text(f"collectors: []\ntargets:\n  prod:\n    dsn: {cluster.dsn('postgres')}\n"
                               f"    databases: ['{prefix}_*']\nbackup:\n  dir: {tmp_path / 'backups'}\n")
        started = time.monotonic()
        result = CliRunner().invoke(main, ["backup", "run", "--config", str(config_file)])
        assert time.monotonic() - started < 30, result.output
        assert result.exit_code == 1, result.output
        failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
        assert len(failed) == 1 and failed[0].startswith(f"FAILED prod/{prefix}_a_tenant: "), result.output
        assert "lock" in failed[0], result.output
        assert f"backup prod_{prefix}_b_other-" in result.output, result.output
    finally:
        holder.close()
        for suffix in ("a_tenant", "b_other"):
            cluster.execute(f"DROP DATABASE IF EXISTS {prefix}_{suffix}")
