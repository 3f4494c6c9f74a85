"""Whole-cluster discovery with a fake session: databases appearing and going, the connection
budget per server, idle connections closed. tests/scrape/test_discovery_postgres.py proves it
against real PostgreSQL.
"""
from __future__ import annotations

import threading
import time

import pytest
from conftest import parse_exposition, sample
from fake_session import FakeServer, Script

from exporter.config import Config, parse_config
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.discovery import classify
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics
from exporter.scrape.session import QueryFailed

QUERIES = """queries:
  - {name: per_db, sql: "SELECT 1 AS x -- per_db", metrics: {x: {}}}
  - {name: per_db_named, sql: "SELECT current_database() AS datname, 2 AS x -- named", labels: [datname],
     metrics: {x: {}}}
  - {name: server, sql: "SELECT 3 AS x -- server", scope: cluster, metrics: {x: {}}}
"""


def config(options: str = "", interval: str = "60s") -> Config:
    return parse_config("collectors: []\ntargets:\n  prod:\n    dsn: postgresql://monitor@127.0.0.1:1/postgres\n"
                        f"    databases: all\n    discovery_interval: {interval}\n{options}" + QUERIES)


def catalog(*names: str | bytes, template: tuple[str, ...] = (), closed: tuple[str, ...] = (),
            forbidden: tuple[str, ...] = (), home: str = "postgres") -> Script:
    """pg_database as discovery reads it, names as bytes; `home` is the DSN's database (listed if not named)."""
    listed = [*names, *template, *closed, *forbidden]
    listed += [home] if home not in listed else []
    rows = [(n.encode() if isinstance(n, str) else n, n in template, n not in closed, n not in forbidden, n == home)
            for n in listed]
    return Script("pg_database", columns=["datname", "datistemplate", "datallowconn", "may_connect", "home"],
                  rows=rows)


def server_for(databases: Script) -> FakeServer:
    # The per-database query answers with the name of the database the session is on.
    return FakeServer(databases, Script("named", columns=["datname", "x"], rows=[("?", 2)]), Script("-- per_db"),
                      Script("-- server", rows=[(3,)]))


def scrape(runner: Runner, only: list[str] | None = None) -> dict:
    result = runner.scrape(timeout=5, only=only)
    return parse_exposition(ScrapeText(runner.config.queries).text(result) + render_self_metrics(result))


@pytest.mark.parametrize("include, exclude, monitored, excluded", [
    (["*"], [], ("app", "billing", "postgres"), 0),
    (["app", "bill*"], [], ("app", "billing"), 1),
    (["*"], ["post*"], ("app", "billing"), 1),
    (["*"], ["*"], (), 3),
])
def test_patterns_choose_the_databases(include, exclude, monitored, excluded):
    rows = [(n.encode(), False, True, True, n == "postgres") for n in ("postgres", "billing", "app")]
    found = classify(rows, include, exclude)
    assert found.monitored == monitored
    assert found.skipped["excluded"] == excluded


def test_templates_closed_and_forbidden_databases_are_skipped_and_counted(run):
    server = server_for(catalog("app", template=("template0", "template1"), closed=("frozen",), forbidden=("hr",)))
    samples = scrape(run(config(), server))
    assert sample(samples, "pg_up", target="prod", datname="app") == 1
    assert sample(samples, "pg_up", target="prod", datname="postgres") == 1  # the DSN's database
    assert [n for n, ls in samples if n == "pg_up"] == ["pg_up", "pg_up"]  # only those
    counts = {o: sample(samples, "pgvigil_discovery_databases", target="prod", outcome=o)
              for o in ("monitored", "excluded", "template", "connections_not_allowed", "no_connect_privilege")}
    assert counts == {"monitored": 2, "excluded": 0, "template": 2, "connections_not_allowed": 1,
                      "no_connect_privilege": 1}
    assert sample(samples, "pgvigil_discovery_success", target="prod") == 1
    errors = [v for (name, labels), v in samples.items() if name == "pgvigil_query_errors_total"]
    assert errors and not any(errors)


def test_series_carry_target_and_datname_and_cluster_queries_run_once_per_server(run):
    server = server_for(catalog("app", "billing", "postgres"))
    samples = scrape(run(config(), server))
    for datname in ("app", "billing", "postgres"):
        assert sample(samples, "per_db_x", target="prod", datname=datname) == 1
        assert sample(samples, "pg_up", target="prod", datname=datname) == 1
    # A query labelling rows with its own datname keeps it (no second datname label).
    assert sample(samples, "per_db_named_x", target="prod", datname="?") == 2
    assert sample(samples, "server_x", target="prod") == 3
    assert server.runs_of("-- server") == 1
    assert server.runs_of("-- per_db") == 3


def test_a_new_database_appears_after_the_refresh_interval_and_a_dropped_one_goes_without_errors(run):
    databases = catalog("app", "postgres")
    server = server_for(databases)
    runner = run(config(interval="50ms"), server)
    scrape(runner)
    databases.rows = catalog("app", "postgres", "fresh").rows
    threading.Event().wait(0.06)
    samples = scrape(runner)
    assert sample(samples, "per_db_x", datname="fresh") == 1
    # Dropped between two readings: its failed connect reads the list again in the same scrape.
    databases.rows = catalog("postgres", "fresh").rows
    server.missing_databases.add("app")
    for session in server.sessions:
        session.close()
    samples = scrape(runner)
    assert sample(samples, "pg_up", datname="app") is None
    assert sample(samples, "per_db_x", datname="app") is None
    assert sample(samples, "pg_exporter_last_scrape_error") == 0
    assert set(runner.targets) == {"prod/fresh", "prod/postgres"}


def test_a_database_list_within_its_interval_is_not_read_again(run):
    server = server_for(catalog("app"))
    runner = run(config(), server)
    scrape(runner)
    scrape(runner)
    assert server.runs_of("pg_database") == 1


def test_connections_stay_within_the_budget_and_idle_ones_are_closed(run):
    names = [f"db{i:02}" for i in range(20)]
    gate = threading.Event()
    server = server_for(catalog(*names, home="db00"))  # db00: the DSN's database
    server.scripts.insert(0, Script("-- per_db", gate=gate))
    runner = run(config("    connection_budget: 3\n"), server)
    done = threading.Thread(target=lambda: scrape(runner))
    done.start()
    while server.runs_of("-- per_db") < 3:
        threading.Event().wait(0.005)
    threading.Event().wait(0.05)
    assert server.open == 3  # the others wait for a slot
    gate.set()
    done.join()
    assert server.peak == 3
    assert server.open == 1  # 20 databases, budget 3: only db00 (cluster-wide queries) stays open between runs
    assert server.runs_of("-- per_db") == 20


def test_a_database_whose_results_are_all_fresh_is_not_connected_to(run):
    """With more databases than the budget, a scrape that finds every per-database result within its
    ttl opens no connection to them: only the first database (it runs the cluster-wide queries)."""
    names = [f"db{i:02}" for i in range(6)]
    server = server_for(catalog(*names, home="db00"))  # db00: the DSN's database
    cached = QUERIES.replace('per_db", metrics', 'per_db", ttl: 1h, metrics').replace(
        "labels: [datname],", "labels: [datname], ttl: 1h,")
    runner = run(parse_config("collectors: []\ntargets:\n  prod:\n    dsn: postgresql://monitor@127.0.0.1:1/postgres\n"
                              "    databases: all\n    connection_budget: 2\n" + cached), server)
    first = scrape(runner)
    connects = server.connects
    second = scrape(runner)
    assert server.connects == connects + 1  # db00, for the cluster-wide query
    assert server.runs_of("-- per_db") == 6 and server.runs_of("-- server") == 2
    for name in names:  # still reported, from cache, and still up
        assert sample(second, "per_db_x", datname=name) == sample(first, "per_db_x", datname=name) == 1
        assert sample(second, "pg_up", target="prod", datname=name) == 1


def test_results_past_their_ttl_are_served_while_the_refresh_runs_in_the_background(run):
    """A scrape of many databases waits for none of their per-database queries once each has a
    result: past its ttl (and within one more) the result is served and refreshed behind the scrape."""
    server = server_for(catalog("app", "billing"))
    cached = QUERIES.replace('per_db", metrics: {x: {}}', 'per_db", ttl: 3s, metrics: {x: {}}').replace(
        "labels: [datname],", "labels: [datname], ttl: 3s,")
    runner = run(parse_config("collectors: []\ntargets:\n  prod:\n    dsn: postgresql://monitor@127.0.0.1:1/postgres\n"
                              "    databases: all\n" + cached), server)
    scrape(runner)
    gate = threading.Event()
    server.scripts.insert(0, Script("-- per_db", rows=[(7,)], gate=gate))
    threading.Event().wait(3.2)  # past the ttl, within twice it: served while refreshed
    try:
        started = time.monotonic()
        stale = scrape(runner, only=["prod/billing"])  # app runs the cluster-wide query: always waited for
        assert time.monotonic() - started < 2.5  # the gated refresh was not waited for (the deadline is 5 s)
        assert sample(stale, "per_db_x", datname="billing") == 1
        assert sample(stale, "pgvigil_query_success", datname="billing", query="per_db") == 1
        timeouts = sample(stale, "pgvigil_query_errors_total", datname="billing", query="per_db", reason="timeout")
        assert timeouts in (None, 0)
    finally:
        gate.set()
    deadline = time.monotonic() + 5  # the refresh, released, lands for the next scrapes
    while sample(scrape(runner, only=["prod/billing"]), "per_db_x", datname="billing") != 7:
        assert time.monotonic() < deadline, "the background refresh never landed"
        threading.Event().wait(0.01)


def test_a_database_without_a_result_is_waited_for(run):
    server = server_for(catalog("app"))
    gate = threading.Event()
    server.scripts.insert(0, Script("-- per_db", gate=gate))
    cached = QUERIES.replace('per_db", metrics: {x: {}}', 'per_db", ttl: 1h, metrics: {x: {}}')
    runner = run(parse_config("collectors: []\ntargets:\n  prod:\n    dsn: postgresql://monitor@127.0.0.1:1/postgres\n"
                              "    databases: all\n" + cached), server)
    threading.Timer(0.3, gate.set).start()
    assert sample(scrape(runner), "per_db_x", datname="app") == 1  # waited for, not a timeout


def test_with_room_in_the_budget_connections_are_kept_between_runs(run):
    server = server_for(catalog("app", "billing", home="app"))
    runner = run(config("    connection_budget: 3\n"), server)
    scrape(runner)
    scrape(runner)
    assert server.open == 2  # discovery's own connection closed, one free slot for it
    assert server.connects == 3  # discovery once, each database once


def test_probe_names_a_root_or_one_discovered_database(run):
    server = server_for(catalog("app", "billing"))
    runner = run(config(), server)
    assert runner.known("prod/app") and runner.known("prod") and not runner.known("prod/nope")
    one = scrape(runner, only=["prod/app"])
    assert sample(one, "pg_up", datname="app") == 1 and sample(one, "pg_up", datname="billing") is None
    both = scrape(runner, only=["prod"])
    assert sample(both, "pg_up", datname="billing") == 1


def test_an_unreachable_server_is_a_failed_discovery_not_a_crash(run):
    server = server_for(catalog("app"))
    server.refuse_connections = True
    samples = scrape(run(config(), server))
    assert sample(samples, "pgvigil_discovery_success", target="prod") == 0
    assert sample(samples, "pg_exporter_last_scrape_error") == 1
    assert sample(samples, "pg_up", target="prod") is None  # no database known yet
    assert sample(samples, "pgvigil_connections_open", target="prod") == 0


def test_health_lists_discovered_databases(run):
    server = server_for(catalog("app", "billing", home="app"))
    runner = run(config(), server)
    assert set(runner.health()) == {"prod/app", "prod/billing"}


def test_cluster_wide_queries_run_in_the_dsns_database_not_the_first_by_name(run):
    server = server_for(catalog("!first", "app", "postgres"))
    samples = scrape(run(config(), server))
    assert [database for database, sql in server.executed_in if "-- server" in sql] == ["postgres"]
    assert sample(samples, "server_x", target="prod") == 3
    assert sample(samples, "per_db_x", datname="!first") == 1


def test_the_dsns_database_left_out_by_the_patterns_still_runs_the_cluster_wide_queries_only(run):
    server = server_for(catalog("app", "billing", "postgres"))
    samples = scrape(run(config("    exclude_databases: [postgres]\n"), server))
    assert [database for database, sql in server.executed_in if "-- server" in sql] == ["postgres"]
    assert not [database for database, sql in server.executed_in if "-- per_db" in sql and database == "postgres"]
    assert sample(samples, "server_x", target="prod") == 3
    assert sample(samples, "per_db_x", datname="postgres") is None
    assert sample(samples, "pgvigil_discovery_databases", outcome="monitored") == 2


def test_a_required_extension_is_judged_in_the_database_the_query_runs_in(run):
    """pg_stat_statements in `app` only, the DSN naming `postgres`: the cluster-wide query needing it is
    skipped in `postgres`, visibly (self-metric, log), and not run in `app` either."""
    server = server_for(catalog("app", "postgres"))
    server.database_extensions["app"] = frozenset({"pg_stat_statements"})
    queries = QUERIES + ('  - {name: statements, sql: "SELECT 4 AS x -- statements", scope: cluster,'
                         ' requires_extension: pg_stat_statements, metrics: {x: {}}}\n')
    server.scripts.append(Script("-- statements", rows=[(4,)]))
    runner = run(parse_config("collectors: []\ntargets:\n  prod:\n    dsn: postgresql://monitor@127.0.0.1:1/postgres\n"
                              "    databases: all\n" + queries), server)
    samples = scrape(runner)
    assert server.runs_of("-- statements") == 0
    assert sample(samples, "pgvigil_query_skipped", datname="postgres", query="statements",
                  reason="missing_extension") == 1
    assert sample(samples, "pgvigil_query_skipped", datname="app", query="statements") is None
    assert sample(samples, "pgvigil_query_success", query="statements") is None


def test_a_database_name_that_is_not_utf8_is_skipped_counted_and_logged_escaped(run, caplog):
    caplog.set_level("INFO", logger="exporter")
    server = server_for(catalog("app", b"bad\xff\xfename", "postgres"))
    samples = scrape(run(config(), server))
    assert sample(samples, "pgvigil_discovery_success", target="prod") == 1
    assert sample(samples, "pg_up", datname="app") == sample(samples, "pg_up", datname="postgres") == 1
    assert sample(samples, "pgvigil_discovery_databases", outcome="undecodable_name") == 1
    assert sample(samples, "pgvigil_discovery_databases", outcome="monitored") == 2
    assert any("bad\\xff\\xfename" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["evil\nforged line", "evil\r\x1b[2Jforged", "evil\u2028forged", "evil\x85forged"])
def test_database_names_are_escaped_in_every_log_line(run, caplog, name):
    caplog.set_level("INFO", logger="exporter")
    databases = catalog("app", name, "postgres")
    server = server_for(databases)
    server.scripts.insert(0, Script("-- per_db", fail=lambda: QueryFailed("relation does not exist"), failures=3))
    runner = run(config(interval="10ms"), server)
    scrape(runner)  # listed (new), a query failing there
    server.missing_databases.add(name)  # unreachable now, then gone
    for session in server.sessions:
        session.close()
    databases.rows = catalog("app", "postgres").rows
    scrape(runner)
    logged = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert len(logged) >= 2, logged
    for message in logged:
        assert message.isprintable(), message


def test_thousands_of_databases_answer_within_the_deadline_and_none_is_falsely_down(run):
    """2,000 databases at the default budget (5), 2 ms a connect: each scrape answers by its deadline
    with what it has; a database not yet visited has no pg_up (counted as not yet scraped), none is
    reported down; /health answers from state at once; every database is reached in the end."""
    count = 2000
    names = [f"db{i:04}" for i in range(count)]
    server = server_for(catalog(*names))
    server.connect_delay = 0.002
    cached = QUERIES.replace('per_db", metrics', 'per_db", ttl: 5m, metrics').replace(
        "labels: [datname],", "labels: [datname], ttl: 5m,")
    runner = run(parse_config("collectors: []\ntargets:\n  prod:\n    dsn: postgresql://monitor@127.0.0.1:1/postgres\n"
                              "    databases: all\n" + cached), server)
    deadline, reached, waiting = 0.5, 0, []
    give_up = time.monotonic() + 120
    while reached < count + 1:
        assert time.monotonic() < give_up, f"{reached} databases reached"
        took, samples = scrape_within(runner, deadline)
        assert took < deadline + 0.25, took
        up = {dict(labels)["datname"]: v for (name, labels), v in samples.items() if name == "pg_up"}
        assert set(up.values()) <= {1.0}, "a database waiting for a connection was reported down"
        assert len(up) >= reached
        reached = len(up)
        waiting.append(sample(samples, "pgvigil_discovery_databases_not_yet_scraped", target="prod"))
        if sample(samples, "pgvigil_discovery_success", target="prod"):  # else no database is known yet
            assert waiting[-1] == len(set(names) - set(up))
        started = time.monotonic()
        health = runner.health()
        assert time.monotonic() - started < 1.0
        assert not [name for name, t in health.items() if t["up"] is False]
        assert len(health) == count + 1
    assert server.peak <= 5 and waiting[-1] == 0 and len(waiting) > 1


def scrape_within(runner: Runner, deadline: float) -> tuple[float, dict]:
    """How long the scrape took, and its samples (parsed after the clock stopped)."""
    started = time.monotonic()
    result = runner.scrape(timeout=deadline)
    took = time.monotonic() - started
    return took, parse_exposition(ScrapeText(runner.config.queries).text(result) + render_self_metrics(result))
