"""The runner's scheduling with a fake session: single flight, ttl, deadlines, reconnects, close.

No database: each test runs in milliseconds. tests/scrape/test_runner_postgres.py proves the
same runner against real PostgreSQL.
"""
from __future__ import annotations

import threading
import time

from fake_session import FakeServer, Script

from exporter.config import Config, parse_config
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.session import QueryFailed

TARGET = "targets:\n  db:\n    dsn: postgresql://monitor@127.0.0.1:1/app\ncollectors: []\n"


def config(queries: str, targets: str = TARGET) -> Config:
    return parse_config(targets + "queries:\n" + queries)


def test_results_are_rendered_with_the_target_label(run):
    server = FakeServer(Script("SELECT 1", columns=["x"], rows=[(41,)]))
    runner = run(config('  - {name: q, sql: "SELECT 1 AS x", metrics: {x: {}}}\n'), server)
    scrape = runner.scrape()
    assert ScrapeText(runner.config.queries).text(scrape) == '# HELP q_x q\n# TYPE q_x gauge\nq_x{target="db"} 41.0\n'
    assert [o.included for o in scrape.outcomes] == [True]


def test_concurrent_scrapes_share_one_run(run):
    gate = threading.Event()
    server = FakeServer(Script("slow", gate=gate))
    runner = run(config('  - {name: q, sql: "SELECT 1 AS x -- slow", metrics: {x: {}}}\n'), server)
    # Release the run only once every scrape holds it: a thread the machine schedules late would
    # otherwise find the run finished and start its own, a second run the runner is not to blame for.
    joined: list[int] = []
    start_run = runner._start_run

    def counted(state):
        found = start_run(state)
        joined.append(found[1])
        return found
    runner._start_run = counted  # type: ignore[method-assign]
    results = []
    threads = [threading.Thread(target=lambda: results.append(runner.scrape(timeout=5))) for _ in range(5)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(joined) < 5 or server.runs_of("slow") == 0:
        assert time.monotonic() < deadline, f"{len(joined)} of 5 scrapes joined, {server.runs_of('slow')} runs"
        threading.Event().wait(0.005)
    gate.set()
    for thread in threads:
        thread.join()
    assert server.runs_of("slow") == 1
    assert all(r.outcomes[0].included for r in results)


def test_a_result_within_its_ttl_is_served_without_running_again(run):
    server = FakeServer(Script("SELECT"))
    runner = run(config('  - {name: q, sql: "SELECT 1 AS x", ttl: 60s, metrics: {x: {}}}\n'), server)
    first, second = runner.scrape(), runner.scrape()
    assert server.runs_of("SELECT") == 1
    assert first.outcomes[0].included and second.outcomes[0].included


def test_without_ttl_every_scrape_runs_the_query(run):
    server = FakeServer(Script("SELECT"))
    runner = run(config('  - {name: q, sql: "SELECT 1 AS x", metrics: {x: {}}}\n'), server)
    runner.scrape()
    runner.scrape()
    assert server.runs_of("SELECT") == 2


def test_a_query_past_the_deadline_is_late_and_the_others_still_report(run):
    gate = threading.Event()
    server = FakeServer(Script("slow", gate=gate), Script("SELECT 2"))
    runner = run(config('  - {name: fast, sql: "SELECT 2 AS x", metrics: {x: {}}}\n'
                        '  - {name: slow, sql: "SELECT 1 AS x -- slow", metrics: {x: {}}}\n'), server)
    scrape = runner.scrape(timeout=1.0)  # "slow" waits for the gate however long; "fast" needs a busy machine's time
    outcomes = {o.query.name: o for o in scrape.outcomes}
    assert outcomes["fast"].included and not outcomes["fast"].timed_out
    assert outcomes["slow"].timed_out and not outcomes["slow"].included
    # late, not failed: the scrape's deadline is the client's to set (its header), not the database's doing
    assert outcomes["slow"].status.late == 1 and outcomes["slow"].status.errors["timeout"] == 0
    gate.set()
    later = runner.scrape(timeout=5)
    assert all(o.included for o in later.outcomes)


def test_a_lost_connection_is_reestablished_once_and_the_query_retried(run):
    server = FakeServer(Script("SELECT", fail=lambda: QueryFailed("server closed the connection", connection_lost=True),
                               failures=1))
    runner = run(config('  - {name: q, sql: "SELECT 1 AS x", metrics: {x: {}}}\n'), server)
    scrape = runner.scrape()
    assert scrape.outcomes[0].included
    assert server.connects == 2 and server.runs_of("SELECT") == 2


def test_a_target_that_cannot_reconnect_is_down_and_its_queries_wait(run):
    server = FakeServer(Script("SELECT 1", fail=lambda: QueryFailed("terminated", connection_lost=True), failures=1),
                        Script("SELECT 2"))
    runner = run(config('  - {name: a, sql: "SELECT 1 AS x", metrics: {x: {}}}\n'
                        '  - {name: b, sql: "SELECT 2 AS x", metrics: {x: {}}}\n'), server)
    runner.scrape()  # connects, learns the server's facts
    server.scripts[0].failures = 1
    server.refuse_connections = True
    scrape = runner.scrape()
    state = runner.targets["db"]
    assert state.up is False and state.error == "connection refused"
    assert not any(o.included for o in scrape.outcomes)
    assert server.runs_of("SELECT 2") == 1  # b did not run after the session was lost


def test_a_failed_query_fails_alone_counted_by_reason(run):
    server = FakeServer(Script("bad", fail=lambda: QueryFailed("division by zero"), failures=1),
                        Script("SELECT 2"))
    runner = run(config('  - {name: bad, sql: "SELECT 1 AS x -- bad", metrics: {x: {}}}\n'
                        '  - {name: good, sql: "SELECT 2 AS x", metrics: {x: {}}}\n'), server)
    outcomes = {o.query.name: o for o in runner.scrape().outcomes}
    assert not outcomes["bad"].included and outcomes["bad"].status.errors["error"] == 1
    assert outcomes["bad"].status.error == "division by zero"
    assert outcomes["good"].included


def test_a_text_value_in_a_metric_column_drops_that_row_counted(run):
    server = FakeServer(Script("SELECT", columns=["k", "x"], rows=[("a", "not a number"), ("b", 2)]))
    runner = run(config('  - {name: q, sql: "SELECT k, x FROM t", labels: [k], metrics: {x: {}}}\n'), server)
    outcome = runner.scrape().outcomes[0]
    assert outcome.included and outcome.status.series == 1
    assert outcome.status.errors["invalid_value"] == 1


def test_previous_run_is_the_prelude_time_of_the_last_successful_run(run):
    server = FakeServer(Script("FROM events", columns=["s"], rows=[(0.3,)], prelude_value="2026-12-01T10:00:00+00:00"))
    runner = run(config('  - {name: e, sql: "SELECT s FROM events WHERE at > {{previous_run}}", '
                        'metrics: {s: {type: histogram, buckets: [1]}}}\n'), server)
    runner.scrape()
    runner.scrape()
    first, second = server.executed
    assert "at > pg_catalog.now()" in first
    assert "at > '2026-12-01T10:00:00+00:00'::pg_catalog.timestamptz" in second


def test_gauge_queries_are_capped_one_row_past_max_series(run):
    server = FakeServer(Script("SELECT", columns=["k", "x"], rows=[(str(i), i) for i in range(10)]))
    runner = run(config('  - {name: q, sql: "SELECT k, x FROM t", labels: [k], max_series: 3, metrics: {x: {}}}\n'),
                 server)
    status = runner.scrape().outcomes[0].status
    assert status.series == 3 and status.errors["cardinality"] == 1


def test_version_and_extension_gates_decide_what_runs(run):
    server = FakeServer(Script("SELECT"), version=130000, extensions=frozenset({"pg_stat_statements"}))
    runner = run(config('  - {name: new, sql: "SELECT 1 AS x", min_server_version: 170000, metrics: {x: {}}}\n'
                        '  - {name: old, sql: "SELECT 2 AS x", max_server_version: 169999, metrics: {x: {}}}\n'
                        '  - {name: ext, sql: "SELECT 3 AS x", requires_extension: pg_stat_statements, '
                        'metrics: {x: {}}}\n'
                        '  - {name: vec, sql: "SELECT 4 AS x", requires_extension: vector, metrics: {x: {}}}\n'),
                 server)
    assert sorted(o.query.name for o in runner.scrape().outcomes) == ["ext", "old"]


def test_a_cluster_scope_query_runs_once_per_server(run):
    targets = ("targets:\n  a:\n    dsn: postgresql://m@127.0.0.1:1/a\n  b:\n    dsn: postgresql://m@127.0.0.1:1/b\n"
               "collectors: []\n")
    server = FakeServer(Script("SELECT"))
    runner = run(config('  - {name: c, sql: "SELECT 1 AS x", scope: cluster, metrics: {x: {}}}\n', targets), server)
    runner.scrape()  # facts are learnt during the first runs
    outcomes = runner.scrape().outcomes
    assert [o.target.name for o in outcomes] == ["a"]


def test_close_cancels_a_running_query_on_the_server(run):
    gate = threading.Event()
    server = FakeServer(Script("slow", gate=gate))
    runner = run(config('  - {name: q, sql: "SELECT 1 AS x -- slow", metrics: {x: {}}}\n'), server)
    runner.scrape(timeout=0.05)
    deadline = time.monotonic() + 30
    while server.runs_of("slow") == 0:  # on a busy machine the run may not have reached the server yet
        assert time.monotonic() < deadline, "the query never started"
        time.sleep(0.005)
    runner.close()
    assert server.cancels >= 1
    assert all(session.closed for session in server.sessions)


def test_a_closed_runner_does_not_reconnect(run):
    server = FakeServer(Script("SELECT"))
    runner = run(config('  - {name: q, sql: "SELECT 1 AS x", metrics: {x: {}}}\n'), server)
    runner.close()
    assert runner.scrape(timeout=0.5).outcomes == []
    assert server.connects == 0


def test_queries_are_spread_over_the_pool(run):
    targets = "targets:\n  db:\n    dsn: postgresql://m@127.0.0.1:1/a\n    pool_size: 2\ncollectors: []\n"
    server = FakeServer(Script("SELECT"))
    runner = run(config("".join(f'  - {{name: q{i}, sql: "SELECT {i} AS x", metrics: {{x: {{}}}}}}\n'
                                for i in range(4)), targets), server)
    runner.scrape()  # the first run connects session 0 before it knows the eligible queries
    assert all(o.included for o in runner.scrape().outcomes)
    assert len(server.sessions) == 2 and server.connects == 2


def test_health_reports_reachability_and_round_trip(run):
    server = FakeServer(Script("SELECT"))
    runner = run(config('  - {name: q, sql: "SELECT 1 AS x", metrics: {x: {}}}\n'), server)
    assert runner.health() == {"db": {"up": True, "rtt_seconds": 0.001, "error": None}}
    server.sessions[0].close()
    server.refuse_connections = True
    assert runner.health() == {"db": {"up": False, "rtt_seconds": None, "error": "connection refused"}}


def test_close_wakes_every_waiting_scrape_at_once(run):
    """A reload closes the runner a scrape is waiting on: the scrape answers then, not at its deadline."""
    gate = threading.Event()
    server = FakeServer(Script("slow", gate=gate))
    runner = run(config('  - {name: q, sql: "SELECT 1 AS x -- slow", metrics: {x: {}}}\n'), server)
    durations: list[float] = []

    def scrape() -> None:
        start = time.monotonic()
        runner.scrape(timeout=30)
        durations.append(time.monotonic() - start)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    while server.runs_of("slow") == 0:
        time.sleep(0.005)
    runner.close()
    for thread in threads:
        thread.join(5)
    assert len(durations) == 8 and max(durations) < 2, durations
    assert server.cancels == 1
    runner.scrape(timeout=30)  # a scrape that took the runner just before close() still answers


def test_reload_storm_under_concurrent_scrapes(run):
    """Reloads every millisecond while 16 threads scrape: no error, and no scrape waits past its queries."""
    from exporter.server import Exporter

    server = FakeServer(Script("SELECT", columns=["x"], rows=[(1,)]))
    configs = [config('  - {name: a, sql: "SELECT 1 AS x", metrics: {x: {}}}\n'),
               config('  - {name: b, sql: "SELECT 2 AS x", metrics: {x: {}}}\n')]
    exporter = Exporter(configs[0], session_factory=server.factory)
    stop = threading.Event()
    failures: list[BaseException] = []
    durations: list[float] = []

    def scrape() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                text = exporter.metrics(5.0)
            except BaseException as exc:  # noqa: B036 (any failure is what this test looks for)
                failures.append(exc)
                return
            durations.append(time.monotonic() - start)
            assert "pgvigil_scrape_duration_seconds" in text or "pg_up" in text

    threads = [threading.Thread(target=scrape) for _ in range(16)]
    for thread in threads:
        thread.start()
    reloads = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        reloads += exporter.reload(configs[(reloads + 1) % 2])
        time.sleep(0.001)
    stop.set()
    for thread in threads:
        thread.join(10)
    exporter.close()
    assert not failures, failures[:3]
    assert reloads > 100 and len(durations) > 100
    assert max(durations) < 1.0, max(durations)
