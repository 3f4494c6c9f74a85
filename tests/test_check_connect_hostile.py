"""`pgvigil check --connect` prints a table to a terminal: a tenant's database name (any character but NUL)
must not add a row of its own or reach the terminal as an escape sequence."""
from __future__ import annotations

import uuid

from click.testing import CliRunner

from exporter.cli import main

QUERY = ("queries:\n  - name: here\n    sql: SELECT 1 AS n\n    metrics: {n: {}}\n")


def test_a_tenants_database_name_cannot_forge_a_row_or_an_escape_sequence(cluster, tmp_path):
    """Before: a database named `<prefix>\\n<a forged row>\\x1b[2K` printed its own line into the table, and
    the terminal got the escape sequence (here: erase the line)."""
    prefix = "t_" + uuid.uuid4().hex[:8]
    name = f"{prefix}\nprod/app  here  1  1  0.1ms  \x1b[2K"
    quoted = '"' + name.replace('"', '""') + '"'
    cluster.execute(f"CREATE DATABASE {quoted}")
    try:
        config_file = tmp_path / "pgvigil.yaml"
        config_file.write_text(f"collectors: []\ntargets:\n  prod:\n    dsn: {cluster.dsn('postgres')}\n"
                               f"    databases: ['{prefix}*']\n{QUERY}")
        # color=True: as on a terminal (click strips escape sequences only when the output is not one)
        result = CliRunner().invoke(main, ["check", "--config", str(config_file), "--connect"], color=True)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert "\x1b" not in result.output, result.output
        assert len(lines) == 3, result.output  # config OK, the header, the database's row
        escaped = f"prod/{prefix}\\nprod/app  here  1  1  0.1ms  \\x1b[2K"
        assert any(line.startswith(escaped) for line in lines), result.output
    finally:
        cluster.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname LIKE "
                        f"'{prefix}%'")
        cluster.execute(f"DROP DATABASE IF EXISTS {quoted}")


