"""`pgvigil grants` against a real PostgreSQL: a role with nothing but CONNECT gets the exact GRANTs its
queries need (and nothing broader); once they are run, nothing is missing and nothing is skipped."""
from __future__ import annotations

import subprocess
import uuid

import psycopg
from click.testing import CliRunner
from conftest import parse_exposition
from psycopg.conninfo import make_conninfo

from exporter.cli import main
from exporter.config import parse_config
from exporter.dev.throwaway import ThrowawayCluster
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics


def test_grants_lists_what_a_connect_only_role_misses_and_running_them_is_enough(cluster, fresh_db, tmp_path):
    dbname = fresh_db.rsplit("/", 1)[1]
    role = "grants_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN", dbname)
    cluster.execute("CREATE SCHEMA extensions; CREATE EXTENSION pg_stat_statements WITH SCHEMA extensions", dbname)
    config_file = tmp_path / "pgvigil.yaml"
    config_file.write_text(f"targets:\n  app: {cluster.dsn(dbname, user=role)}\n")
    try:
        result = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
        assert result.exit_code == 0, result.output
        statements = [line for line in result.output.splitlines() if line.startswith(("GRANT", "ALTER"))]
        assert statements == [f"GRANT USAGE ON SCHEMA extensions TO {role};",
                              f"GRANT EXECUTE ON FUNCTION pg_ls_waldir() TO {role};",
                              f"GRANT pg_read_all_stats TO {role};",
                              f"ALTER ROLE {role} SET default_transaction_read_only = on;"]
        assert f"-- target app (role {role}, database {dbname})" in result.output
        assert "-- missing today: pg_wal (permission_denied: permission denied for function pg_ls_waldir)" \
            in result.output
        assert "pg_monitor" not in result.output and "SUPERUSER" not in result.output.upper()

        cluster.execute("".join(f"{statement}\n" for statement in statements), dbname)
        again = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
        assert again.exit_code == 0 and "-- missing today: nothing" in again.output
        assert "-- nothing to grant" in again.output

        runner = Runner(parse_config(config_file.read_text()))
        try:
            scrape = runner.scrape(timeout=30)
        finally:
            runner.close()
        samples = parse_exposition(ScrapeText(runner.config.queries).text(scrape) + render_self_metrics(scrape))
        # Nothing refused any more; an extension not installed in this database is no GRANT's to give.
        assert not [labels for name, labels in samples if name == "pgvigil_query_skipped"
                    and ("reason", "missing_extension") not in labels]
        assert sum(v for (name, _), v in samples.items() if name == "pgvigil_query_errors_total") == 0
    finally:
        cluster.execute(f"DROP OWNED BY {role}", dbname)
        cluster.execute(f"DROP ROLE {role}")


def test_grants_name_objects_as_the_catalog_does_and_only_what_queries_use(cluster, fresh_db, tmp_path):
    """Quoted names stay quoted ("audit log", "UserSessions" is not usersessions), functions by signature,
    and a hidden schema no configured query uses gets no USAGE."""
    dbname = fresh_db.rsplit("/", 1)[1]
    role = "grants_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN", dbname)
    cluster.execute("""CREATE TABLE "audit log" (n int); CREATE TABLE "UserSessions" (n int);
        CREATE TABLE usersessions (n int); CREATE SCHEMA "Odd Schema"; CREATE TABLE "Odd Schema".t (n int);
        CREATE SCHEMA unused; CREATE EXTENSION pg_stat_statements WITH SCHEMA unused;
        CREATE FUNCTION "Odd Schema".f(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
        REVOKE EXECUTE ON FUNCTION "Odd Schema".f(int) FROM PUBLIC""", dbname)
    config_file = tmp_path / "pgvigil.yaml"
    config_file.write_text(
        f"collectors: []\ntargets:\n  app: {cluster.dsn(dbname, user=role)}\nqueries:\n"
        """  - {name: audit, sql: 'SELECT count(*) AS n FROM "audit log"', metrics: {n: {}}}\n"""
        """  - {name: sessions, sql: 'SELECT count(*) AS n FROM "UserSessions"', metrics: {n: {}}}\n"""
        """  - {name: odd, sql: 'SELECT "Odd Schema".f(count(*)::int) AS n FROM "Odd Schema".t', metrics: {n: {}}}\n""")
    try:
        result = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
        assert result.exit_code == 0, result.output
        statements = [line for line in result.output.splitlines() if line.startswith(("GRANT", "ALTER"))]
        assert statements == [f'GRANT EXECUTE ON FUNCTION "Odd Schema".f(integer) TO {role};',
                              f'GRANT SELECT ON "Odd Schema".t TO {role};',
                              f'GRANT SELECT ON public."UserSessions" TO {role};',
                              f'GRANT SELECT ON public."audit log" TO {role};',
                              f'GRANT USAGE ON SCHEMA "Odd Schema" TO {role};',
                              f"ALTER ROLE {role} SET default_transaction_read_only = on;"]
        cluster.execute("".join(f"{statement}\n" for statement in statements), dbname)
        again = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
        assert "-- missing today: nothing" in again.output and "-- nothing to grant" in again.output, again.output
    finally:
        cluster.execute(f"DROP OWNED BY {role}", dbname)
        cluster.execute(f"DROP ROLE {role}")


def test_an_unreachable_target_exits_1(tmp_path):
    config_file = tmp_path / "pgvigil.yaml"
    config_file.write_text("targets:\n  gone: postgresql://nobody@127.0.0.1:1/x\n")
    result = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
    assert result.exit_code == 1
    assert result.output.startswith("-- target gone: cannot connect: ")


def test_a_discovery_root_gets_one_section_per_database_and_psql_running_them_is_enough(tmp_path):
    """`databases: all`: grants in each database where a query runs (the DSN's database runs the cluster-wide
    queries, each database the per-database ones), only what that database needs, each section opened by a
    \\connect psql follows; piped to psql as printed, nothing is skipped or failing in any database."""
    odd = 'Tenant\'s "db" = x'  # quotes, a space and `=`: psql and libpq must both read it as one name
    config_file = tmp_path / "pgvigil.yaml"
    with ThrowawayCluster() as pg:
        pg.execute("CREATE ROLE mon LOGIN")  # CONNECT through PUBLIC, nothing else
        pg.execute("CREATE DATABASE app")
        pg.execute('CREATE DATABASE "Tenant\'s ""db"" = x"')
        # pg_stat_statements in a schema of its own, in one database: a per-database query reads it there
        pg.execute("CREATE SCHEMA stats; CREATE EXTENSION pg_stat_statements WITH SCHEMA stats", "app")
        with psycopg.connect(make_conninfo(pg.dsn(), dbname=odd), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA private")  # hidden from the role, and no query uses it: no grant
        config_file.write_text(
            f"targets:\n  prod:\n    dsn: {pg.dsn('postgres', user='mon')}\n    databases: all\n"
            "queries:\n  - name: statements_here\n    sql: SELECT count(*) AS n FROM pg_stat_statements\n"
            "    requires_extension: pg_stat_statements\n    metrics: {n: {}}\n")

        result = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
        assert result.exit_code == 0, result.output
        sections = {}
        for section in result.output.split("-- target ")[1:]:
            head, *lines = section.splitlines()
            sections[head] = [line for line in lines if line and not line.startswith("-- ")]
        assert sections == {
            "prod (role mon, database postgres)": [
                r"""\connect -reuse-previous=on '"dbname=''postgres''"'""",
                "GRANT EXECUTE ON FUNCTION pg_ls_waldir() TO mon;",
                "GRANT pg_read_all_stats TO mon;",
                "ALTER ROLE mon SET default_transaction_read_only = on;"],
            f"prod (role mon, database {odd})": [
                r"""\connect -reuse-previous=on '"dbname=''Tenant\\''s ""db"" = x''"'"""],
            "prod (role mon, database app)": [
                r"""\connect -reuse-previous=on '"dbname=''app''"'""",
                "GRANT USAGE ON SCHEMA stats TO mon;"],
        }, result.output
        assert "-- missing today: statements_here (missing_relation: " in result.output

        # As printed, through psql connected anywhere on the server: each section runs in its own database.
        psql = subprocess.run([str(pg.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.dsn("app")],
                              input=result.output, capture_output=True, text=True)
        assert psql.returncode == 0, psql.stderr
        assert pg.execute("SELECT has_schema_privilege('mon', 'stats', 'USAGE')", "app") == [(True,)]
        assert pg.execute("SELECT has_function_privilege('mon', 'pg_ls_waldir()', 'EXECUTE')", "app") == [(False,)]

        again = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
        assert again.exit_code == 0 and again.output.count("-- missing today: nothing") == 3, again.output
        assert again.output.count("-- nothing to grant") == 3, again.output

        runner = Runner(parse_config(config_file.read_text()))
        try:
            scrape = runner.scrape(timeout=30)
        finally:
            runner.close()
        samples = parse_exposition(ScrapeText(runner.config.queries).text(scrape) + render_self_metrics(scrape))
        assert {labels for name, labels in samples if name == "pg_up"} == {
            frozenset({("target", "prod"), ("datname", datname)}) for datname in ("postgres", "app", odd)}
        assert not [labels for name, labels in samples if name == "pgvigil_query_skipped"
                    and ("reason", "missing_extension") not in labels]
        assert sum(v for (name, _), v in samples.items() if name == "pgvigil_query_errors_total") == 0
        assert samples[("statements_here_n", frozenset({("target", "prod"), ("datname", "app")}))] >= 0


def test_grants_say_which_tables_hide_their_statistics_from_the_bloat_pack(cluster, fresh_db, tmp_path):
    """pg_stats shows a role only the columns it may SELECT: the bloat pack estimates nothing else. grants
    says how many tables that hides, by schema, and what would lift it, as comments only (it is read access
    to the data, never proposed as a statement)."""
    dbname = fresh_db.rsplit("/", 1)[1]
    role = "grants_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}", dbname)
    cluster.execute('CREATE SCHEMA "App Data"; CREATE TABLE "App Data".orders (id int, note text);'
                    'CREATE TABLE "App Data".lines (id int); CREATE TABLE public.visible (id int);'
                    'INSERT INTO "App Data".orders SELECT g, repeat(\'x\', 50) FROM generate_series(1, 5000) g;'
                    f'GRANT SELECT ON public.visible TO {role}; ANALYZE', dbname)
    config_file = tmp_path / "pgvigil.yaml"
    config_file.write_text(f"collectors: [bloat]\ntargets:\n  app: {cluster.dsn(dbname, user=role)}\n")
    try:
        result = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
        assert result.exit_code == 0, result.output
        assert ("-- missing today: bloat estimates of 2 tables in 1 schema (pg_stats hides the columns of tables "
                "the role may not SELECT)") in result.output
        assert f'--   GRANT SELECT ON ALL TABLES IN SCHEMA "App Data" TO {role};  (2 tables)' in result.output
        assert not [line for line in result.output.splitlines() if line.startswith("GRANT")]
        # what the comment says is enough: the role then estimates the table
        cluster.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "App Data" TO {role}', dbname)
        again = CliRunner().invoke(main, ["grants", "--config", str(config_file)])
        assert "bloat estimates" not in again.output and "-- missing today: nothing" in again.output
    finally:
        cluster.execute(f"DROP OWNED BY {role}", dbname)
        cluster.execute(f"DROP ROLE {role}")
