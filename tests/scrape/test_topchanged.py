"""top_changed: the rows that grew most since the previous run, and remainder rows that keep
sum(rate(...)) equal to the server's total whichever rows are exported."""
from __future__ import annotations

import random

import pytest
from conftest import parse_exposition

from exporter.config import ConfigError, parse_config
from exporter.scrape.topchanged import TopChangedRows

COLUMNS = ["user", "datname", "queryid", "calls", "seconds"]
CONFIG = """collectors: []
queries:
  - name: s
    sql: SELECT 1 AS calls, 1 AS seconds, 'u' AS user, 'd' AS datname, 'q' AS queryid
    labels: [user, datname, queryid]
    top_changed: {by: seconds, limit: 2}
    metrics: {calls: {type: counter}, seconds: {type: counter}}
"""


def selector() -> TopChangedRows:
    return TopChangedRows(parse_config(CONFIG).queries[0])


def rows(stats: dict[str, tuple[float, float]], datname: str = "app") -> list[tuple]:
    return [("u", datname, queryid, calls, seconds) for queryid, (calls, seconds) in stats.items()]


def keyed(selected: list[tuple]) -> dict[tuple, tuple]:
    return {row[:3]: row[3:] for row in selected}


def test_the_rows_that_grew_most_are_exported_and_the_rest_is_other():
    top = selector()
    first = keyed(top.select(COLUMNS, rows({"a": (10, 100), "b": (10, 50), "c": (10, 1)})))
    assert set(first) == {("u", "app", "a"), ("u", "app", "b"), ("u", "app", "other")}
    # c had the all-time smallest total but grows most now: it enters, a (idle) leaves.
    second = keyed(top.select(COLUMNS, rows({"a": (10, 100), "b": (11, 51), "c": (20, 60)})))
    assert set(second) == {("u", "app", "c"), ("u", "app", "b"), ("u", "app", "other")}
    assert second[("u", "app", "c")] == (20, 60)  # exported rows keep the server's cumulative values


def test_the_remainder_only_grows_and_sums_of_increases_equal_the_servers():
    """A Prometheus-style increase (only between samples of the same series) summed over all series
    equals the server's total increase, run after run, while rows enter and leave the top."""
    rng = random.Random(7)
    top = selector()
    stats = {f"q{i}": [0.0, 0.0] for i in range(12)}
    previous: dict[tuple, tuple] = {}
    other_before = 0.0
    for _ in range(40):
        before = sum(calls for calls, _ in stats.values())
        for queryid in rng.sample(sorted(stats), 4):
            stats[queryid][0] += rng.randint(1, 50)
            stats[queryid][1] += rng.random() * 10
        exported = keyed(top.select(COLUMNS, rows({k: (c, s) for k, (c, s) in stats.items()})))
        increase = sum(values[0] - previous[key][0] for key, values in exported.items() if key in previous)
        if previous:
            assert increase == pytest.approx(sum(calls for calls, _ in stats.values()) - before)
        other = exported[("u", "app", "other")][0]
        assert other >= other_before
        other_before, previous = other, exported
        assert len(exported) == 3


def test_a_reset_counts_the_new_values_as_growth():
    top = selector()
    top.select(COLUMNS, rows({"a": (100, 100), "b": (100, 100), "c": (100, 100)}))
    after = keyed(top.select(COLUMNS, rows({"a": (1, 1), "b": (2, 2), "c": (3, 3)})))  # pg_stat_statements_reset()
    assert after[("u", "app", "other")][0] >= 100  # never decreases
    assert ("u", "app", "c") in after and ("u", "app", "b") in after


def test_one_remainder_per_user_and_database():
    top = selector()
    selected = top.select(COLUMNS, rows({"a": (1, 3), "b": (1, 2), "c": (1, 1)}, "app")
                          + rows({"x": (1, 0.5)}, "billing"))
    assert {row[:3] for row in selected if row[2] == "other"} == {("u", "app", "other"), ("u", "billing", "other")}


def test_a_remainder_whose_group_is_gone_expires():
    """Each short-lived role (dynamic credentials) leaves a remainder; an hour after its last row, it ends."""
    now = [0.0]
    top = TopChangedRows(parse_config(CONFIG).queries[0], clock=lambda: now[0])
    for minute in range(120):
        now[0] = minute * 60.0
        role = f"temp_{minute}"
        selected = top.select(COLUMNS, [(role, "app", q, 1, seconds) for q, seconds in (("a", 3), ("b", 2), ("c", 1))])
        remainders = {row[0] for row in selected if row[2] == "other"}
        assert role in remainders
        assert len(remainders) <= 61  # the roles of the last hour, and no more


def test_remainders_are_bounded_by_max_series():
    top = TopChangedRows(parse_config(CONFIG.replace("limit: 2}", "limit: 2}\n    max_series: 5")).queries[0])
    for run in range(20):
        selected = top.select(COLUMNS, [(f"role_{run}_{i}", "app", "q", 1, 1) for i in range(3)])
    assert len([row for row in selected if row[2] == "other"]) <= 5


@pytest.mark.parametrize("top_changed, message", [
    ("{by: calls_, limit: 2}",
     "top_changed.by: expected one of the query's counter columns (calls, seconds), got 'calls_'"),
    ("{by: seconds, limit: 0}", "top_changed.limit: expected at least 1"),
    ("{by: seconds, limit: 2, order: desc}", "top_changed.order: unknown key 'order'; expected one of: by, limit"),
])
def test_invalid_settings_are_located_errors(top_changed, message):
    with pytest.raises(ConfigError) as raised:
        parse_config(CONFIG.replace("{by: seconds, limit: 2}", top_changed))
    assert raised.value.errors == [f"<string>:6: queries[0].{message}"]


def test_rendered_remainder_series(run_fake):
    samples = parse_exposition(run_fake)
    other = frozenset({("target", "db"), ("user", "u"), ("datname", "d"), ("queryid", "other")})
    # q3 did not make the top 2; q1 and q2 entered it in the first run (no rate from a first sample).
    assert samples[("s_calls_total", other)] == 1 + 5 + 4
    assert {dict(labels)["queryid"] for name, labels in samples if name == "s_calls_total"} == {"q1", "q2", "other"}


@pytest.fixture
def run_fake():
    from fake_session import FakeServer, Script

    from exporter.scrape.assembly import ScrapeText
    from exporter.scrape.runner import Runner

    config = parse_config(CONFIG.replace("collectors: []", "collectors: []\ntargets:\n  db: postgresql://x@127.0.0.1:1/d"))
    server = FakeServer(Script("SELECT", columns=["calls", "seconds", "user", "datname", "queryid"],
                               rows=[(5, 5.0, "u", "d", "q1"), (4, 4.0, "u", "d", "q2"), (1, 1.0, "u", "d", "q3")]))
    runner = Runner(config, session_factory=server.factory)
    try:
        runner.scrape()
        yield ScrapeText(config.queries).text(runner.scrape())
    finally:
        runner.close()
