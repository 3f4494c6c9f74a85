"""What `pgvigil backup` prints (to a terminal, or a cron job's log) names a tenant's database as a tenant
wrote it, any character but NUL: a newline must not start a line of its own, nor an escape sequence reach
the terminal."""
from __future__ import annotations

import uuid

from click.testing import CliRunner

from exporter.cli import main


def test_a_tenants_database_name_cannot_forge_a_line_of_the_backup_output(cluster, tmp_path):
    """Before: `FAILED prod/<name>: ...` and the status table printed the name raw: its second line read as
    a backup of its own, and the escape sequence (erase the line) reached the terminal."""
    prefix = "t_" + uuid.uuid4().hex[:8]
    name = f"{prefix}\nbackup prod/app: 1.0 MiB in 0.1s\x1b[2K"
    quoted = '"' + name.replace('"', '""') + '"'
    role = "bk_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN")
    cluster.execute(f"CREATE DATABASE {quoted}")
    cluster.execute(f"REVOKE CONNECT ON DATABASE {quoted} FROM PUBLIC")
    config_file = tmp_path / "pgvigil.yaml"
    config_file.write_text(f"collectors: []\ntargets:\n  prod:\n    dsn: {cluster.dsn('postgres', user=role)}\n"
                           f"    databases: ['{prefix}*']\nbackup:\n  dir: {tmp_path / 'backups'}\n")
    try:
        for args in (["run"], ["status"]):
            result = CliRunner().invoke(main, ["backup", *args, "--config", str(config_file)], color=True)
            assert "\x1b" not in result.output, result.output
            assert not [line for line in result.output.splitlines() if line.startswith("backup prod/app")], \
                result.output
            assert f"prod/{prefix}\\nbackup prod/app: 1.0 MiB in 0.1s\\x1b[2K" in result.output, result.output
    finally:
        cluster.execute(f"DROP DATABASE IF EXISTS {quoted}")
        cluster.execute(f"DROP ROLE {role}")


def test_a_table_named_with_a_newline_is_found_in_the_archive_and_verifies(cluster, fresh_db, tmp_path):
    """Before: pg_restore --list prints a name's newlines as spaces, so verify looked for `public.a<newline>b`
    in vain and failed a good backup, its message split over two lines: a tenant kept its database's
    backups from ever verifying (and the failed-verification alert firing)."""
    cluster.execute('CREATE TABLE "a\nb" (id int); INSERT INTO "a\nb" VALUES (1), (2)', fresh_db.rsplit("/", 1)[1])
    directory = tmp_path / "backups"
    run = CliRunner().invoke(main, ["backup", "run", "--dsn", fresh_db, "--dir", str(directory)])
    assert run.exit_code == 0, run.output
    verify = CliRunner().invoke(main, ["backup", "verify", "--dir", str(directory), "--restore", "--dsn", fresh_db])
    assert verify.exit_code == 0, verify.output
    assert "row counts match the manifest for 1 tables" in verify.output, verify.output
