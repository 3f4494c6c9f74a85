"""A cluster-wide query runs once per server, on its first speaker in target order, even when a later target
connects first: the answer decided before the first one had connected is not kept."""
from __future__ import annotations

import time

from fake_session import FakeServer, FakeSession, Script

from exporter.config import parse_config

TARGETS = ("targets:\n  a:\n    dsn: postgresql://m@127.0.0.1:1/a\n  b:\n    dsn: postgresql://m@127.0.0.1:1/b\n"
           "collectors: []\nqueries:\n  - {name: c, sql: \"SELECT 1 AS x\", scope: cluster, metrics: {x: {}}}\n")


def test_a_cluster_query_stays_on_the_first_target_when_a_later_one_connected_first(run, monkeypatch):
    """Before: `b` connected first, owned the query for that scrape, and kept it from then on, so the
    server's cluster-wide series came twice, from `a` and from `b`, for as long as pgvigil ran (seen as
    tests/scrape/test_runner_postgres.py's cluster-scope test failing after other tests had warmed up)."""
    connect = FakeSession.ensure_connected

    def a_connects_late(self):
        if self.spec.name == "a" and self.facts is None:
            time.sleep(0.3)
        return connect(self)

    monkeypatch.setattr(FakeSession, "ensure_connected", a_connects_late)
    runner = run(parse_config(TARGETS), FakeServer(Script("SELECT")))
    runner.scrape(timeout=5)  # `b` is decided while `a` is still connecting
    for _ in range(2):
        assert [o.target.name for o in runner.scrape(timeout=5).outcomes] == ["a"]
