"""`pick:`: the rows a query reads, chosen every `every` seconds (exporter/scrape/picks.py).

The runner with a fake session (no database): when the pick runs, what reaches the query's SQL,
and how a pick that fails or returns something else fails its query alone. Against PostgreSQL:
tests/scrape/test_picks_postgres.py; the config's checks: tests/test_config.py.
"""
from __future__ import annotations

import time

import pytest
from fake_session import FakeServer, Script
from test_runner import config

from exporter.config import parse_config
from exporter.scrape.session import QueryFailed

PICKED = """  - name: q
    sql: "SELECT 1 AS x WHERE 1 = ANY ({{picked}}) -- main"
    labels: []
    metrics: {x: {}}
    max_series: 10
    pick: {sql: "SELECT 5 AS id -- pick", every: %s}
"""


def test_the_pick_runs_first_then_only_every_interval(run):
    server = FakeServer(Script("-- pick", columns=["id"], rows=[(7,), (5,), (None,), (7,)]), Script("-- main"))
    runner = run(config(PICKED % "60s"), server)
    for _ in range(3):
        assert runner.scrape().outcomes[0].included
    assert server.runs_of("-- pick") == 1
    mains = [sql for sql in server.executed if "-- main" in sql]
    assert len(mains) == 3
    # Distinct integers in the pick's order, NULL left out: an array literal in place of {{picked}}.
    assert all("1 = ANY ('{7,5}')" in sql for sql in mains)


def test_the_pick_runs_again_once_its_interval_has_passed(run):
    server = FakeServer(Script("-- pick", columns=["id"], rows=[(1,)]), Script("-- main"))
    runner = run(config(PICKED % "200ms"), server)
    runner.scrape()
    runner.scrape()
    assert server.runs_of("-- pick") == 1
    time.sleep(0.25)
    runner.scrape()
    assert server.runs_of("-- pick") == 2 and server.runs_of("-- main") == 3


def test_an_empty_pick_reads_no_ids(run):
    server = FakeServer(Script("-- pick", columns=["id"], rows=[]), Script("-- main", rows=[]))
    runner = run(config(PICKED % "60s"), server)
    assert runner.scrape().outcomes[0].included
    assert "ANY ('{}')" in server.executed[-1]


@pytest.mark.parametrize("rows, message", [
    ([("16384'); DROP TABLE t; --",)], "expected integers (oids, pids) in its first column 'id', got str"),
    ([(1.5,)], "got float"),
    ([(True,)], "got bool"),
    ([(i,) for i in range(11)], "returned more than max_series (10) rows"),
])
def test_a_pick_returning_other_than_integers_fails_its_query_alone(run, rows, message):
    server = FakeServer(Script("-- pick", columns=["id"], rows=rows), Script("-- main"), Script("SELECT 2"))
    runner = run(config(PICKED % "60s" + '  - {name: other, sql: "SELECT 2 AS x", metrics: {x: {}}}\n'), server)
    outcomes = {o.query.name: o for o in runner.scrape().outcomes}
    assert outcomes["other"].included and not outcomes["q"].included
    status = runner.targets["db"].statuses["q"]
    assert message in str(status.error) and str(status.error).startswith("pick: ")
    assert status.errors["error"] == 1
    assert server.runs_of("-- main") == 0  # nothing the pick returned reached the query's SQL
    assert "DROP" not in str(status.error)  # nor its error


def test_a_failed_pick_fails_the_run_and_is_tried_again_on_the_next(run):
    pick = Script("-- pick", columns=["id"], rows=[(3,)], fail=lambda: QueryFailed("permission denied for table t"),
                  failures=1)
    server = FakeServer(pick, Script("-- main"))
    runner = run(config(PICKED % "60s"), server)
    assert not runner.scrape().outcomes[0].included
    assert runner.targets["db"].statuses["q"].error == "pick: permission denied for table t"
    assert server.runs_of("-- main") == 0
    assert runner.scrape().outcomes[0].included
    assert server.runs_of("-- pick") == 2 and "ANY ('{3}')" in server.executed[-1]


def test_a_lost_connection_during_the_pick_reconnects_and_picks_again(run):
    pick = Script("-- pick", columns=["id"], rows=[(4,)],
                  fail=lambda: QueryFailed("server closed the connection", connection_lost=True), failures=1)
    server = FakeServer(pick, Script("-- main"))
    runner = run(config(PICKED % "60s"), server)
    assert runner.scrape().outcomes[0].included
    assert server.connects == 2 and server.runs_of("-- pick") == 2 and server.runs_of("-- main") == 1


def test_each_target_keeps_its_own_picks(run):
    targets = ("targets:\n  a: postgresql://monitor@127.0.0.1:1/a\n  b: postgresql://monitor@127.0.0.1:1/b\n"
               "collectors: []\n")
    server = FakeServer(Script("-- pick", columns=["id"], rows=[(9,)]), Script("-- main"))
    runner = run(config(PICKED % "60s", targets), server)
    runner.scrape()
    runner.scrape()
    assert server.runs_of("-- pick") == 2  # once per target, not once for both
    assert runner.targets["a"].picks.keys() == runner.targets["b"].picks.keys() == {("SELECT 5 AS id -- pick", 10)}


def test_queries_with_the_same_pick_share_it(run):
    server = FakeServer(Script("-- pick", columns=["id"], rows=[(6,)]), Script("-- main"), Script("-- sizes"))
    sizes = (PICKED % "60s").replace("name: q", "name: sizes").replace("-- main", "-- sizes")
    runner = run(config(PICKED % "60s" + sizes), server)
    runner.scrape()
    runner.scrape()
    assert server.runs_of("-- pick") == 1
    assert server.runs_of("-- main") == server.runs_of("-- sizes") == 2
    assert all("ANY ('{6}')" in sql for sql in server.executed if "-- pick" not in sql)


def test_a_pick_the_role_cannot_run_skips_its_optional_query(run):
    denied = QueryFailed("permission denied for view secret", sqlstate="42501")
    server = FakeServer(Script("-- pick", columns=["id"], probe_fail=lambda: denied, probe_failures=1),
                        Script("-- main"))
    runner = run(config(PICKED % "60s" + "    optional: true\n"), server)
    runner.scrape()
    assert runner.targets["db"].skipped == {"q": "permission_denied"}
    assert server.runs_of("-- pick") == 0 and server.runs_of("-- main") == 0
    assert any("-- main" in sql and "ANY ('{}')" in sql for sql in server.probes)  # the query is probed too


def test_the_tables_pack_ranks_once_for_its_counters_and_its_sizes():
    queries = {q.name: q for q in parse_config("collectors: [tables]\n").queries}
    counters, sizes = queries["pg_stat_user_tables"], queries["pg_stat_user_tables_sizes"]
    assert counters.pick is not None and counters.pick == sizes.pick and counters.max_series == sizes.max_series
    assert (counters.ttl, sizes.ttl, counters.pick.every) == (30.0, 300.0, 300.0)
