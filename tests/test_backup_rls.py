"""`backup verify --restore` counts the restored rows with row_security off, as pg_dump reads them: a table
whose owner FORCEs its row-level security must neither fail the count nor run its policy's functions."""
from __future__ import annotations

import uuid

from click.testing import CliRunner

from exporter.cli import main


def test_a_table_that_forces_row_level_security_verifies_without_running_its_policy(cluster, fresh_db, tmp_path):
    """Before: as a role that is not a superuser (so owner of what it restored), the count failed with `query
    would be affected by row-level security policy`: every backup of such a database failed verification."""
    dbname = fresh_db.rsplit("/", 1)[1]
    role = "verifier_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN CREATEDB")
    # the policy's function fails whatever reads through it: a restore does not run it, nor must the count
    cluster.execute("CREATE FUNCTION visible(text) RETURNS boolean LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'the policy ran as %', current_user; END $$;"
                    "CREATE TABLE private (id int, owner text);"
                    "INSERT INTO private SELECT g, 'x' FROM generate_series(1, 25) g;"
                    "ALTER TABLE private ENABLE ROW LEVEL SECURITY; ALTER TABLE private FORCE ROW LEVEL SECURITY;"
                    "CREATE POLICY mine ON private USING (public.visible(owner))", dbname)
    directory = tmp_path / "backups"
    try:
        run = CliRunner().invoke(main, ["backup", "run", "--dsn", fresh_db, "--dir", str(directory)])
        assert run.exit_code == 0, run.output
        verify = CliRunner().invoke(main, ["backup", "verify", "--dir", str(directory), "--restore", "--dsn",
                                           cluster.dsn("postgres", user=role), "--sanity-query",
                                           "SELECT count(*) = 25 FROM private"])
        assert verify.exit_code == 0, verify.output
        assert "row counts match the manifest for 1 tables" in verify.output, verify.output
        assert "sanity query returned True" in verify.output, verify.output
    finally:
        cluster.execute(f"DROP ROLE {role}")
