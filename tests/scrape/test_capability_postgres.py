"""Capability probing against a real PostgreSQL: a role with nothing but CONNECT runs the default
packs with zero errors; what it may not run is skipped and counted; a GRANT brings it back."""
from __future__ import annotations

import uuid

from conftest import parse_exposition, sample

from exporter.config import parse_config
from exporter.scrape import execution
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics


def scrape(runner: Runner) -> dict:
    result = runner.scrape(timeout=20)
    return parse_exposition(ScrapeText(runner.config.queries).text(result) + render_self_metrics(result))


def test_a_connect_only_role_gets_zero_errors_and_a_grant_brings_skipped_queries_back(cluster, fresh_db, monkeypatch):
    role = "connect_only_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN")
    dbname = fresh_db.rsplit("/", 1)[1]
    runner = Runner(parse_config(f"targets:\n  db: {cluster.dsn(dbname, user=role)}\n"))
    try:
        samples = scrape(runner)
        errors = {dict(labels)["query"]: v for (name, labels), v in samples.items()
                  if name == "pgvigil_query_errors_total" and v}
        assert errors == {}
        assert sample(samples, "pg_exporter_last_scrape_error") == 0
        assert sample(samples, "pgvigil_query_skipped", target="db", query="pg_wal", reason="permission_denied") == 1
        assert sample(samples, "pg_wal_segments") is None
        cluster.execute(f"GRANT pg_monitor TO {role}")
        monkeypatch.setattr(execution, "CAPABILITY_REFRESH_SECONDS", 0.0)
        samples = scrape(runner)
        assert sample(samples, "pgvigil_query_skipped", query="pg_wal") is None
        assert sample(samples, "pg_wal_segments") is not None
    finally:
        runner.close()
        cluster.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
