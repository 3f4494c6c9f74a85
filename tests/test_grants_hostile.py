"""`pgvigil grants` prints a script an administrator pipes to psql, usually as a superuser: a tenant's names
must stay where they are printed (a comment stays a comment, a name stays one name)."""
from __future__ import annotations

import subprocess
import uuid

from click.testing import CliRunner

from exporter.cli import main

# A schema name that ends the comment it is printed in and runs a statement of the tenant's choosing.
INJECTING = 'x\nCREATE TABLE public.pwned_by_tenant (id int); --'


def test_a_tenants_schema_name_cannot_end_the_comment_it_is_printed_in(cluster, fresh_db, tmp_path):
    """Before: the bloat note printed the schema as `format('%I')` quoted it, newline and all, inside a `--`
    comment: its second line was a statement, which psql ran as the administrator."""
    dbname = fresh_db.rsplit("/", 1)[1]
    role = "grants_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}", dbname)
    quoted = '"' + INJECTING.replace('"', '""') + '"'
    cluster.execute(f"CREATE SCHEMA {quoted}; CREATE TABLE {quoted}.hidden (id int, note text);"
                    f"INSERT INTO {quoted}.hidden SELECT g, 'x' FROM generate_series(1, 100) g; ANALYZE", dbname)
    config_file = tmp_path / "pgvigil.yaml"
    config_file.write_text(f"collectors: [bloat]\ntargets:\n  app: {cluster.dsn(dbname, user=role)}\n")
    try:
        result = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
        assert result.exit_code == 0, result.output
        assert "bloat estimates of 1 tables in 1 schema" in result.output, result.output
        statements = [line for line in result.output.splitlines() if line and not line.startswith("-- ")]
        assert statements == [f"ALTER ROLE {role} SET default_transaction_read_only = on;"], result.output
        assert (f'--   GRANT SELECT ON ALL TABLES IN SCHEMA "x\\nCREATE TABLE public.pwned_by_tenant (id int); --" '
                f"TO {role};  (1 tables)") in result.output
        psql = subprocess.run([str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", fresh_db],
                              input=result.output, capture_output=True, text=True, timeout=30)
        assert psql.returncode == 0, psql.stderr
        assert cluster.execute("SELECT to_regclass('public.pwned_by_tenant') IS NULL", dbname) == [(True,)]
    finally:
        cluster.execute(f"DROP OWNED BY {role}", dbname)
        cluster.execute(f"DROP ROLE {role}")
