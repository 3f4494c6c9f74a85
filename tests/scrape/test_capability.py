"""Capability probing with a fake session: a query the role may not run is skipped, not failed;
a GRANT later brings it back. tests/scrape/test_capability_postgres.py proves it on PostgreSQL."""
from __future__ import annotations

import pytest
from conftest import parse_exposition, sample
from fake_session import FakeServer, Script

from exporter.config import parse_config
from exporter.scrape import execution
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics
from exporter.scrape.session import QueryFailed

CONFIG = """targets:
  db:
    dsn: postgresql://monitor@127.0.0.1:1/app
collectors: []
queries:
  - {name: allowed, sql: "SELECT 1 AS x -- allowed", metrics: {x: {}}}
  - {name: forbidden, sql: "SELECT 1 AS x -- forbidden", optional: true, metrics: {x: {}}}
"""


def scrape(runner: Runner) -> dict:
    result = runner.scrape(timeout=5)
    return parse_exposition(ScrapeText(runner.config.queries).text(result) + render_self_metrics(result))


@pytest.fixture
def runner_for():
    made: list[Runner] = []

    def make(server: FakeServer) -> Runner:
        made.append(Runner(parse_config(CONFIG), session_factory=server.factory))
        return made[-1]

    yield make
    for runner in made:
        runner.close()


@pytest.mark.parametrize("sqlstate, reason", [
    ("42501", "permission_denied"), ("42P01", "missing_relation"), ("42883", "missing_function"),
    ("3F000", "missing_schema"),
])
def test_a_query_the_role_cannot_run_is_skipped_not_failed(runner_for, sqlstate, reason):
    denied = Script("-- forbidden", probe_fail=lambda: QueryFailed("denied", sqlstate=sqlstate), probe_failures=99)
    server = FakeServer(Script("-- allowed"), denied)
    samples = scrape(runner_for(server))
    assert sample(samples, "pgvigil_query_skipped", target="db", query="forbidden", reason=reason) == 1
    assert sample(samples, "pgvigil_query_success", query="forbidden") is None
    assert sample(samples, "pgvigil_query_errors_total", query="forbidden", reason="error") is None
    assert sample(samples, "allowed_x") == 1
    assert sample(samples, "pg_exporter_last_scrape_error") == 0
    assert server.runs_of("-- forbidden") == 0 and len(server.probes) == 2  # probed, never run


@pytest.mark.parametrize("sqlstate", ["42501", "42P01"])
def test_the_users_own_query_is_not_skipped_but_fails_counted(sqlstate):
    """A missing GRANT or a typo in a table name is the user's to hear about: an error, not a quiet skip."""
    refused = lambda: QueryFailed("permission denied for table audit", sqlstate=sqlstate)  # noqa: E731
    server = FakeServer(Script("-- allowed"),
                        Script("-- forbidden", fail=refused, failures=99, probe_fail=refused, probe_failures=99))
    runner = Runner(parse_config(CONFIG.replace(", optional: true", "")), session_factory=server.factory)
    try:
        samples = scrape(runner)
    finally:
        runner.close()
    assert sample(samples, "pgvigil_query_skipped", query="forbidden") is None
    assert sample(samples, "pgvigil_query_errors_total", query="forbidden", reason="error") == 1
    assert sample(samples, "pg_exporter_last_scrape_error") == 1


def test_other_failures_are_not_skipped_but_reported_by_the_run(runner_for):
    broken = Script("-- forbidden", fail=lambda: QueryFailed("division by zero", sqlstate="22012"), failures=99,
                    probe_fail=lambda: QueryFailed("division by zero", sqlstate="22012"), probe_failures=99)
    samples = scrape(runner_for(FakeServer(Script("-- allowed"), broken)))
    assert sample(samples, "pgvigil_query_skipped", query="forbidden") is None
    assert sample(samples, "pgvigil_query_errors_total", query="forbidden", reason="error") == 1


def test_the_probe_runs_once_per_refresh_and_a_grant_brings_the_query_back(runner_for, monkeypatch):
    denied = Script("-- forbidden", probe_fail=lambda: QueryFailed("denied", sqlstate="42501"), probe_failures=1)
    server = FakeServer(Script("-- allowed"), denied)
    runner = runner_for(server)
    scrape(runner)
    scrape(runner)
    assert len(server.probes) == 2 and server.runs_of("-- allowed") == 2  # probed once, run twice
    monkeypatch.setattr(execution, "CAPABILITY_REFRESH_SECONDS", 0.0)
    samples = scrape(runner)  # the probe now passes (failures used up): a GRANT happened
    assert sample(samples, "pgvigil_query_skipped", query="forbidden") is None
    assert sample(samples, "forbidden_x") == 1
