"""Why the monitoring role could write: reported per target, and read from the server at most once per
refresh interval per (target, database) however often a discovered database reconnects."""
from __future__ import annotations

import uuid

import pytest
from conftest import parse_exposition, sample

from exporter.config import parse_config
from exporter.scrape import writecheck
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics


class Reader:
    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        self.calls = 0

    def __call__(self, sql: str) -> list[tuple[str]]:
        assert sql == writecheck.ROLE_CAN_WRITE_SQL
        self.calls += 1
        return [(reason,) for reason in self.reasons]


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    monkeypatch.setattr(writecheck, "_checked", {})


def test_the_answer_is_read_once_per_refresh_interval_per_target_and_database():
    read, now = Reader(["writes tables"]), [1000.0]
    clock = lambda: now[0]  # noqa: E731
    for _ in range(50):  # fifty reconnects of one discovered database within the interval
        assert writecheck.role_can_write("t", "app", read, clock) == ("writes tables",)
    assert read.calls == 1
    assert writecheck.role_can_write("t", "other", read, clock) == ("writes tables",)
    assert read.calls == 2
    read.reasons = []  # a REVOKE shows once the interval has passed
    now[0] += writecheck.REFRESH_SECONDS
    assert writecheck.role_can_write("t", "app", read, clock) == ()
    assert read.calls == 3


def test_answers_for_databases_gone_for_an_interval_are_dropped():
    read, now = Reader([]), [0.0]
    clock = lambda: now[0]  # noqa: E731
    for i in range(1000):  # a tenant creating and dropping databases
        writecheck.role_can_write("t", f"db{i}", read, clock)
    now[0] += writecheck.REFRESH_SECONDS
    writecheck.role_can_write("t", "app", read, clock)
    assert list(writecheck._checked) == [("t", "app")]


def scrape(runner: Runner) -> dict:
    result = runner.scrape(timeout=20)
    return parse_exposition(ScrapeText(runner.config.queries).text(result) + render_self_metrics(result))


def test_a_superuser_is_reported_and_a_pg_monitor_role_is_not(cluster, fresh_db):
    role = "reader_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN IN ROLE pg_monitor")
    dbname = fresh_db.rsplit("/", 1)[1]
    runner = Runner(parse_config(f"targets:\n  reader: {cluster.dsn(dbname, user=role)}\n"
                                 f"  owner: {cluster.dsn(dbname)}\n"))
    try:
        samples = scrape(runner)
        assert sample(samples, "pgvigil_role_can_write", target="reader") == 0
        assert sample(samples, "pgvigil_role_can_write", target="owner") == 1
    finally:
        runner.close()
