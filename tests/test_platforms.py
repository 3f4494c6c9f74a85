"""A Supabase-like database watched by a restricted monitoring role, with every pack: no errors, the
right queries skipped, pg_stat_statements found in the `extensions` schema, no platform tables in the
per-table and row-level security metrics."""
from __future__ import annotations

import uuid

import pytest
from conftest import parse_exposition, sample

from exporter.config import available_packs, parse_config
from exporter.scrape import runner as runner_module
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics

PLATFORM_TABLES = {"auth": "users", "storage": "objects", "realtime": "messages", "vault": "secrets",
                   "supabase_functions": "hooks", "graphql": "registry", "net": "http_request_queue"}

# The platform's layout: its own schemas and tables (none with row-level security), extensions in
# `extensions`, the user's tables in public, one of them without row-level security.
LAYOUT = """
CREATE SCHEMA extensions;
CREATE EXTENSION pg_stat_statements WITH SCHEMA extensions;
{platform}
CREATE TABLE public.todos (id bigint PRIMARY KEY, task text);
ALTER TABLE public.todos ENABLE ROW LEVEL SECURITY;
CREATE TABLE public.notes (id bigint PRIMARY KEY, body text);
CREATE INDEX notes_body ON public.notes (body);
INSERT INTO public.notes SELECT g, 'n' FROM generate_series(1, 100) g;
"""


@pytest.fixture
def supabase_like(cluster, fresh_db):
    """(dsn of the monitoring role, database name): the role has CONNECT and pg_read_all_stats only."""
    dbname = fresh_db.rsplit("/", 1)[1]
    platform = "".join(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.{table} (id bigint PRIMARY KEY);"
                       for schema, table in PLATFORM_TABLES.items())
    cluster.execute(LAYOUT.format(platform=platform), dbname)
    role = "supabase_monitor_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_read_all_stats TO {role}")
    yield cluster.dsn(dbname, user=role), dbname
    cluster.execute(f"DROP OWNED BY {role}; DROP ROLE {role}", dbname)


def scrape(runner: Runner) -> dict:
    result = runner.scrape(timeout=30)
    return parse_exposition(ScrapeText(runner.config.queries).text(result) + render_self_metrics(result))


def test_every_pack_runs_as_a_restricted_role_without_errors(cluster, supabase_like, monkeypatch):
    dsn, dbname = supabase_like
    packs = ", ".join(available_packs())
    runner = Runner(parse_config(f"collectors: [{packs}]\ntargets:\n  supa: {dsn}\n"))
    try:
        scrape(runner)  # the second scrape has counters' previous values and statistics
        samples = scrape(runner)
        # Without USAGE on `extensions`, its views are invisible to the role: skipped, not failed.
        skipped = {dict(labels)["query"]: dict(labels)["reason"] for (name, labels) in samples
                   if name == "pgvigil_query_skipped"}
        assert skipped.get("pg_stat_statements") == "missing_function"  # pg_stat_statements(false)
        assert skipped.get("pg_wal") == "permission_denied"  # pg_ls_waldir needs pg_monitor
        cluster.execute(f"GRANT USAGE ON SCHEMA extensions TO {dsn.split('://')[1].split('@')[0]}", dbname)
        monkeypatch.setattr(runner_module, "CAPABILITY_REFRESH_SECONDS", 0.0)
        runner.close()
        runner = Runner(runner.config)  # a new session: the search path is extended at connect
        samples = scrape(runner)
    finally:
        runner.close()
    errors = {dict(labels)["query"]: v for (name, labels), v in samples.items()
              if name == "pgvigil_query_errors_total" and v}
    assert errors == {}
    skipped = {dict(labels)["query"]: dict(labels)["reason"] for (name, labels) in samples
               if name == "pgvigil_query_skipped"}
    assert skipped.get("pg_wal") == "permission_denied"
    assert not any("statements" in query for query in skipped), skipped  # found in the `extensions` schema
    assert any(name.startswith("pg_stat_statements_") for name, _ in samples)

    def schemas_of(metric: str) -> set[str]:
        return {dict(labels)["schemaname"] for name, labels in samples if name == metric}

    assert schemas_of("pg_security_table_rls_disabled") == {"public"}
    assert sample(samples, "pg_security_table_rls_disabled", relname="notes") == 1
    assert sample(samples, "pg_security_tables_without_rls", schemaname="public") == 1
    for metric in ("pg_stat_user_tables_n_live_tup", "pg_stat_user_indexes_size_bytes"):
        assert schemas_of(metric) == {"public"}, metric


def test_the_excluded_schemas_are_configurable(supabase_like):
    dsn, _ = supabase_like
    runner = Runner(parse_config(f"collectors: [security]\ndefaults: {{exclude_schemas: [auth]}}\n"
                                 f"targets:\n  supa: {dsn}\n"))
    try:
        samples = scrape(runner)
    finally:
        runner.close()
    schemas = {dict(labels)["schemaname"] for name, labels in samples if name == "pg_security_table_rls_disabled"}
    assert "auth" not in schemas and {"storage", "realtime", "public"} <= schemas
