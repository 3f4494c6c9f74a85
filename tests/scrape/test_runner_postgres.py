"""The runner against a real PostgreSQL: conversions, failures, read-only safety, timeouts, caching."""
from __future__ import annotations

import dataclasses
import math
import threading
import time

import pytest
from conftest import config_for, parse_exposition, sample, wait_until

from exporter.dev.throwaway import ThrowawayCluster
from exporter.scrape.assembly import ScrapeText, scrape_once
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics


def scrape(runner: Runner, timeout: float | None = None) -> dict:
    result = runner.scrape(timeout)
    return parse_exposition(ScrapeText(runner.config.queries).text(result) + render_self_metrics(result))


def test_every_value_type_is_converted(fresh_db):
    config = config_for(fresh_db, """
  - name: v
    sql: >
      SELECT 42::int AS i, 9007199254740993::bigint AS big, 1.5::float8 AS f, 2.25::numeric AS n,
             true AS b, false AS bf, '1970-01-02 00:00:00+00'::timestamptz AS ts, '1970-01-03'::date AS d,
             interval '1 hour 30 seconds' AS iv, 'NaN'::float8 AS nan, 'Infinity'::numeric AS inf,
             '-Infinity'::float8 AS ninf, 1e-300::float8 AS tiny, 0.5::real AS r, 7::smallint AS s
    metrics: {i: {}, big: {}, f: {}, n: {}, b: {}, bf: {}, ts: {}, d: {}, iv: {}, nan: {}, inf: {}, ninf: {}, \
tiny: {}, r: {}, s: {}}
""")
    samples = parse_exposition(scrape_once(config))
    expected = {"i": 42, "big": 9007199254740992.0, "f": 1.5, "n": 2.25, "b": 1, "bf": 0, "ts": 86400, "d": 172800,
                "iv": 3630, "inf": math.inf, "ninf": -math.inf, "tiny": 1e-300, "r": 0.5, "s": 7}
    for column, value in expected.items():
        assert sample(samples, f"v_{column}", target="db") == value, column
    assert math.isnan(sample(samples, "v_nan", target="db"))


def test_nulls_defaults_text_values_and_duplicates(fresh_db):
    config = config_for(fresh_db, """
  - name: t
    sql: >
      SELECT * FROM (VALUES ('a', 1, NULL::int, '1'), ('b', NULL, 2, 'x'), (NULL, 3, 3, '2'), ('a', 9, 9, '3'))
        AS v(k, plain, defaulted, txt)
    labels: [k]
    metrics:
      plain: {}
      defaulted: {default: -1}
      txt: {}
""")
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "t_plain", k="a") == 1          # first row of the duplicate 'a' wins
    assert sample(samples, "t_plain", k="b") is None       # NULL omits the sample
    assert sample(samples, "t_defaulted", k="a") == -1     # ... unless the metric has a default
    assert sample(samples, "t_plain", k="") == 3           # NULL label -> ""
    assert sample(samples, "t_txt", k="a") is None         # text is an error for that row only
    errors = {r: sample(samples, "pgvigil_query_errors_total", query="t", reason=r)
              for r in ("duplicate", "invalid_value")}
    assert errors == {"duplicate": 1, "invalid_value": 3}
    assert sample(samples, "pgvigil_query_success", query="t") == 1


def test_a_failing_query_fails_alone(fresh_db):
    config = config_for(fresh_db, """
  - {name: good, sql: "SELECT 1 AS x", metrics: {x: {}}}
  - {name: bad, sql: "SELECT 1/0 AS x", metrics: {x: {}}}
  - {name: missing_column, sql: "SELECT 1 AS y", metrics: {x: {}}}
  - {name: after, sql: "SELECT 2 AS x", metrics: {x: {}}}
""")
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "good_x") == 1 and sample(samples, "after_x") == 2
    assert sample(samples, "bad_x") is None and sample(samples, "missing_column_x") is None
    for query, ok in (("good", 1), ("bad", 0), ("missing_column", 0), ("after", 1)):
        assert sample(samples, "pgvigil_query_success", query=query) == ok
        assert sample(samples, "pgvigil_query_errors_total", query=query, reason="error") == 1 - ok
    assert sample(samples, "pg_exporter_last_scrape_error") == 1
    assert sample(samples, "pg_up", target="db") == 1


@pytest.mark.parametrize("sql", [
    "DELETE FROM precious RETURNING 1 AS x",
    "WITH d AS (DELETE FROM precious RETURNING 1) SELECT count(*) AS x FROM d",
    "SELECT 1 AS x; COMMIT; DELETE FROM precious",
    "SELECT 1 AS x) q; DELETE FROM precious; SELECT * FROM (SELECT 1 AS x",
    "SELECT erase_everything() AS x",
    "SELECT nextval('precious_seq') AS x",
    "SELECT set_config('default_transaction_read_only', 'off', false) AS x FROM (SELECT erase_everything()) e",
])
def test_user_sql_cannot_write(fresh_db, cluster, sql):
    dbname = fresh_db.rsplit("/", 1)[1]
    cluster.execute("CREATE TABLE precious (id int); INSERT INTO precious SELECT generate_series(1, 10);"
                    "CREATE SEQUENCE precious_seq;"
                    "CREATE FUNCTION erase_everything() RETURNS int LANGUAGE sql AS 'DELETE FROM precious; SELECT 0';",
                    dbname)
    # Past the config check (which rejects the non-queries among these): the session refuses or the
    # read-only transaction stops each one.
    config = config_for(fresh_db, "  - {name: w, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n")
    config = dataclasses.replace(config, queries=(dataclasses.replace(config.queries[0], sql=sql),))
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "pgvigil_query_success", query="w") == 0
    assert cluster.execute("SELECT count(*) FROM precious", dbname) == [(10,)]
    assert cluster.execute("SELECT last_value, is_called FROM precious_seq", dbname) == [(1, False)]


def test_a_query_cannot_make_the_next_one_read_write(fresh_db, cluster):
    """The session's default_transaction_read_only is the user's to change (set_config(..., false)
    lasts the session; check refuses it written in a query, a function hides it): each transaction is
    made read-only by pgvigil's own first statement."""
    dbname = fresh_db.rsplit("/", 1)[1]
    cluster.execute("CREATE TABLE precious (id int); INSERT INTO precious SELECT generate_series(1, 10);"
                    "CREATE FUNCTION erase_everything() RETURNS int LANGUAGE sql AS 'DELETE FROM precious; SELECT 0';"
                    "CREATE FUNCTION flip() RETURNS boolean LANGUAGE sql"
                    " AS $$SELECT set_config('default_transaction_read_only', 'off', false) = 'off'$$;",
                    dbname)
    config = config_for(fresh_db, """
  - {name: flip, sql: "SELECT flip() AS x", metrics: {x: {}}}
  - {name: erase, sql: "SELECT erase_everything() AS x", metrics: {x: {}}}
""")
    runner = Runner(config)
    try:
        for _ in range(2):
            samples = scrape(runner)
            assert sample(samples, "flip_x") == 1  # the setting did change, for the session
            assert sample(samples, "pgvigil_query_success", query="erase") == 0
    finally:
        runner.close()
    assert cluster.execute("SELECT count(*) FROM precious", dbname) == [(10,)]


def test_a_result_larger_than_one_batch_is_read_whole_on_every_run(fresh_db, cluster):
    """Most results come in one message; one that fills a batch (here 16 rows of 1 MB labels at most)
    is read again through a cursor, and through the cursor only on later runs."""
    marker = "pgvigil_large_result_marker"
    config = config_for(fresh_db, f"""
  - {{name: big, max_label_bytes: 1000000, labels: [l], metrics: {{{marker}: {{}}}},
     sql: "SELECT 'row' || g AS l, g AS {marker} FROM generate_series(1, 100) g"}}
""")
    cluster.execute("SELECT pg_stat_statements_reset()")
    runner = Runner(config)
    try:
        for _ in range(3):
            samples = scrape(runner)
            assert [sample(samples, f"big_{marker}", l=f"row{g}") for g in (1, 16, 17, 100)] == [1, 16, 17, 100]
            assert len([key for key in samples if key[0] == f"big_{marker}"]) == 100
    finally:
        runner.close()
    calls = dict(cluster.execute(
        "SELECT CASE WHEN query LIKE 'DECLARE%' THEN 'cursor' ELSE 'one message' END, sum(calls)::int"
        f" FROM pg_stat_statements WHERE query LIKE '%{marker}%) AS pgvigil_query%'"
        " AND query NOT LIKE '%pgvigil_probe%' GROUP BY 1"))  # capability.py's probe
    assert calls == {"one message": 1, "cursor": 3}


def test_statement_timeout_ends_a_slow_query(fresh_db):
    config = config_for(fresh_db, """
  - {name: slow, sql: "SELECT pg_sleep(5) IS NULL AS x", allow_calls: [pg_sleep], timeout: 300ms, metrics: {x: {}}}
  - {name: quick, sql: "SELECT 1 AS x", metrics: {x: {}}}
""")
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "pgvigil_query_errors_total", query="slow", reason="timeout") == 1
    assert sample(samples, "pgvigil_query_success", query="slow") == 0
    assert sample(samples, "quick_x") == 1


def test_scrape_deadline_reports_unfinished_queries_as_late(fresh_db):
    config = config_for({"slow": fresh_db, "fast": fresh_db}, """
  - {name: nap, sql: "SELECT pg_sleep(5) IS NULL AS x", allow_calls: [pg_sleep], targets: [slow], metrics: {x: {}}}
  - {name: one, sql: "SELECT 1 AS x", targets: [fast], metrics: {x: {}}}
""")
    runner = Runner(config)
    try:
        # 2 s: the fast target's first connect, server facts and query fit even on a busy machine
        # (0.5 s was tight), and the nap (ended at 3 s by the default statement timeout) outlasts it
        samples = scrape(runner, timeout=2.0)
        assert sample(samples, "one_x", target="fast") == 1
        assert sample(samples, "nap_x") is None
        assert sample(samples, "pgvigil_query_late_total", target="slow", query="nap") == 1
        assert sample(samples, "pgvigil_query_errors_total", target="slow", query="nap", reason="timeout") == 0
        assert sample(samples, "pgvigil_query_success", target="slow", query="nap") == 0
    finally:
        runner.close()


def test_no_session_is_left_idle_in_transaction(fresh_db, cluster):
    dbname = fresh_db.rsplit("/", 1)[1]
    config = config_for(fresh_db, """
  - {name: ok, sql: "SELECT 1 AS x", metrics: {x: {}}}
  - {name: bad, sql: "SELECT 1/0 AS x", metrics: {x: {}}}
""")
    runner = Runner(config)
    try:
        for _ in range(3):
            scrape(runner)
        rows = cluster.execute(f"SELECT state, application_name FROM pg_stat_activity WHERE datname = '{dbname}'"
                               " AND application_name = 'pgvigil'")
        assert rows == [("idle", "pgvigil")]
    finally:
        runner.close()
    # close() hung up; the backend leaves pg_stat_activity when it has exited, just after
    wait_until(lambda: cluster.execute(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{dbname}'"
                                       " AND application_name = 'pgvigil'") == [(0,)], 10,
               "the closed runner's session to end")


def test_successful_queries_do_not_count_as_rolled_back_transactions(fresh_db, cluster):
    """pgvigil's transactions end in COMMIT: its own scrapes must not raise the rollback ratio it alerts on."""
    dbname = fresh_db.rsplit("/", 1)[1]
    counts = f"SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = '{dbname}'"
    commits_before, rollbacks_before = cluster.execute(counts)[0]
    runner = Runner(config_for(fresh_db, '  - {name: ok, sql: "SELECT 1 AS x", metrics: {x: {}}}\n'))
    try:
        for _ in range(5):
            assert sample(scrape(runner), "ok_x") == 1
    finally:
        runner.close()  # the backend's exit flushes its statistics
    deadline = time.monotonic() + 10
    while cluster.execute(counts)[0][0] - commits_before < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    commits, rollbacks = cluster.execute(counts)[0]
    assert commits - commits_before >= 5
    assert rollbacks == rollbacks_before


def test_series_no_longer_returned_disappear(fresh_db, cluster):
    dbname = fresh_db.rsplit("/", 1)[1]
    cluster.execute("CREATE TABLE jobs (state text); INSERT INTO jobs VALUES ('queued'), ('running')", dbname)
    config = config_for(fresh_db, """
  - {name: jobs, sql: "SELECT state, count(*) AS n FROM jobs GROUP BY state", labels: [state], metrics: {n: {}}}
""")
    runner = Runner(config)
    try:
        assert sample(scrape(runner), "jobs_n", state="running") == 1
        cluster.execute("DELETE FROM jobs WHERE state = 'running'", dbname)
        samples = scrape(runner)
        assert sample(samples, "jobs_n", state="running") is None
        assert sample(samples, "jobs_n", state="queued") == 1
    finally:
        runner.close()


def test_histogram_accumulates_only_new_rows(fresh_db, cluster):
    dbname = fresh_db.rsplit("/", 1)[1]
    cluster.execute("CREATE TABLE request_log (route text, ms int, at timestamptz DEFAULT clock_timestamp());"
                    "INSERT INTO request_log (route, ms) VALUES ('/old', 100)", dbname)
    config = config_for(fresh_db, """
  - name: request
    sql: "SELECT route, ms / 1000.0 AS duration_seconds FROM request_log \
WHERE at > {{previous_run}} AND route LIKE '/%'"
    labels: [route]
    metrics:
      duration_seconds: {type: histogram, buckets: [0.05, 0.1, 0.5, 1]}
""")
    runner = Runner(config)
    try:
        first = scrape(runner)
        assert sample(first, "request_duration_seconds_count", route="/old") is None  # before pgvigil started
        cluster.execute("INSERT INTO request_log (route, ms) VALUES ('/a', 40), ('/a', 300), ('/b', 2000)", dbname)
        second = scrape(runner)
        cluster.execute("INSERT INTO request_log (route, ms) VALUES ('/a', 90)", dbname)
        third = scrape(runner)
    finally:
        runner.close()
    assert sample(second, "request_duration_seconds_count", route="/a") == 2
    assert sample(second, "request_duration_seconds_bucket", route="/a", le="0.05") == 1
    assert sample(second, "request_duration_seconds_bucket", route="/b", le="+Inf") == 1
    assert sample(second, "request_duration_seconds_bucket", route="/b", le="1.0") == 0
    assert sample(third, "request_duration_seconds_count", route="/a") == 3
    assert sample(third, "request_duration_seconds_bucket", route="/a", le="0.1") == 2
    assert sample(third, "request_duration_seconds_sum", route="/a") == pytest.approx(0.43)
    assert sample(third, "request_duration_seconds_count", route="/b") == 1  # kept, not observed again


def test_gauge_histogram_is_a_fresh_snapshot_each_run(fresh_db, cluster):
    dbname = fresh_db.rsplit("/", 1)[1]
    cluster.execute("CREATE TABLE ages (s float8); INSERT INTO ages VALUES (1), (20), (400)", dbname)
    config = config_for(fresh_db, """
  - {name: tx, sql: "SELECT s AS age_seconds FROM ages", \
metrics: {age_seconds: {type: gauge_histogram, buckets: [5, 60, 300]}}}
""")
    runner = Runner(config)
    try:
        first = scrape(runner)
        cluster.execute("DELETE FROM ages", dbname)
        empty = scrape(runner)
    finally:
        runner.close()
    assert sample(first, "tx_age_seconds_bucket", le="60.0") == 2
    assert sample(first, "tx_age_seconds_bucket", le="+Inf") == 3
    assert sample(first, "tx_age_seconds_gcount") == 3 and sample(first, "tx_age_seconds_gsum") == 421
    assert sample(empty, "tx_age_seconds_bucket", le="+Inf") == 0  # no labels: always present, zero when empty


def test_ttl_caches_and_concurrent_scrapes_share_one_run(fresh_db, cluster):
    marker = "pgvigil_single_flight_marker"
    config = config_for(fresh_db, f"""
  - {{name: cached, sql: "SELECT 1 AS {marker}_a", ttl: 1h, metrics: {{{marker}_a: {{}}}}}}
  - {{name: shared, sql: "SELECT pg_sleep(0.3) IS NULL AS {marker}_b", allow_calls: [pg_sleep],
     metrics: {{{marker}_b: {{}}}}}}
""")
    cluster.execute("SELECT pg_stat_statements_reset()")
    runner = Runner(config)
    try:
        scrape(runner)
        threads = [threading.Thread(target=scrape, args=(runner,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        runner.close()
    calls = dict(cluster.execute(
        f"SELECT CASE WHEN query LIKE '%{marker}_a%' THEN 'a' ELSE 'b' END, sum(calls)::int FROM pg_stat_statements"
        f" WHERE query LIKE '%{marker}%) AS pgvigil_query%' AND query NOT LIKE '%pgvigil_probe%'"  # capability.py's
        " GROUP BY 1"))
    assert calls["a"] == 1
    assert 2 <= calls["b"] <= 3  # the first scrape, then the 8 concurrent scrapes share one (maybe two) runs


def test_version_predicates_and_required_extensions(fresh_db):
    config = config_for(fresh_db, """
  - {name: future, sql: "SELECT 1 AS x", min_server_version: 990000, metrics: {x: {}}}
  - {name: past, sql: "SELECT 1 AS x", max_server_version: 90600, metrics: {x: {}}}
  - {name: now, sql: "SELECT 1 AS x", min_server_version: 150000, max_server_version: 159999, metrics: {x: {}}}
  - {name: ext, sql: "SELECT 1 AS x", requires_extension: pg_trgm, metrics: {x: {}}}
""")
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "now_x") == 1
    for absent in ("future", "past", "ext"):
        assert sample(samples, f"{absent}_x") is None
        assert sample(samples, "pgvigil_query_success", query=absent) is None  # not run, not failed


def test_cluster_scope_runs_once_per_server_and_labels_are_constant(cluster, fresh_db):
    config = config_for({"one": cluster.dsn(), "two": fresh_db}, """
  - {name: per_db, sql: "SELECT 1 AS x", metrics: {x: {}}}
  - {name: per_server, scope: cluster, sql: "SELECT 1 AS x", metrics: {x: {}}}
""", extra="")
    runner = Runner(config)
    try:
        scrape(runner)  # learn which targets share a server
        samples = scrape(runner)
    finally:
        runner.close()
    assert sample(samples, "per_db_x", target="one") == 1 and sample(samples, "per_db_x", target="two") == 1
    assert sample(samples, "per_server_x", target="one") == 1
    assert sample(samples, "per_server_x", target="two") is None


def test_target_constant_labels_on_every_series(fresh_db):
    from exporter.config import parse_config

    config = parse_config(f"collectors: []\ntargets:\n  main:\n    dsn: {fresh_db}\n"
                          "    labels: {cluster: eu-1, env: prod}\n"
                          "queries:\n  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n")
    text = scrape_once(config)
    for line in text.splitlines():
        if line.startswith(("q_x", "pg_up", "pgvigil_query_success")):
            assert 'target="main",cluster="eu-1",env="prod"' in line


def test_unreachable_target_is_reported_and_others_served(fresh_db):
    from exporter.dev.throwaway import free_port

    config = config_for({"up": fresh_db, "down": f"postgresql://nobody@127.0.0.1:{free_port()}/x"},
                        "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n")
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "pg_up", target="up") == 1 and sample(samples, "pg_up", target="down") == 0
    assert sample(samples, "q_x", target="up") == 1 and sample(samples, "q_x", target="down") is None


def test_server_restart_between_scrapes_reconnects():
    with ThrowawayCluster(preload=()) as pg:
        config = config_for(pg.dsn(), "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n")
        runner = Runner(config)
        try:
            assert sample(scrape(runner), "q_x") == 1
            pg.stop()
            down = scrape(runner)
            assert sample(down, "pg_up") == 0 and sample(down, "q_x") is None
            pg.start()
            up = scrape(runner)
            assert sample(up, "pg_up") == 1 and sample(up, "q_x") == 1
            pg.restart()  # between two scrapes: the first query after it reconnects and retries
            again = scrape(runner)
            assert sample(again, "pg_up") == 1 and sample(again, "q_x") == 1
            assert sample(again, "pgvigil_query_errors_total", query="q", reason="error") == 0
        finally:
            runner.close()


def test_pool_size_spreads_queries_over_several_sessions(fresh_db, cluster):
    from exporter.config import parse_config

    dbname = fresh_db.rsplit("/", 1)[1]
    queries = "".join(f"  - {{name: q{i}, sql: 'SELECT pg_backend_pid() AS pid', metrics: {{pid: {{}}}}}}\n"
                      for i in range(4))
    config = parse_config(f"collectors: []\ntargets:\n  db: {{dsn: '{fresh_db}', pool_size: 2}}\nqueries:\n{queries}")
    runner = Runner(config)
    try:
        samples = scrape(runner)
        pids = {sample(samples, f"q{i}_pid") for i in range(4)}
        sessions = cluster.execute(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{dbname}'"
                                   " AND application_name = 'pgvigil'")
    finally:
        runner.close()
    assert len(pids) == 2 and None not in pids
    assert sessions == [(2,)]


def test_max_series_truncates_rows_but_bounds_histogram_label_sets(fresh_db):
    config = config_for(fresh_db, """
  - {name: many, max_series: 5, sql: "SELECT g::text AS k, g AS v FROM generate_series(1, 8) g", \
labels: [k], metrics: {v: {}}}
  - name: obs
    max_series: 2
    sql: "SELECT (g % 3)::text AS k, g AS v FROM generate_series(1, 30) g"
    labels: [k]
    metrics: {v: {type: gauge_histogram, buckets: [10, 20]}}
""")
    samples = parse_exposition(scrape_once(config))
    assert len([1 for (name, _) in samples if name == "many_v"]) == 5
    assert sample(samples, "pgvigil_query_errors_total", query="many", reason="cardinality") == 1  # one cut run
    # 30 observations in 3 label sets: all rows observed, but only 2 label sets kept
    counts = [v for (name, _), v in samples.items() if name == "obs_v_gcount"]
    assert sorted(counts) == [10, 10]
    assert sample(samples, "pgvigil_query_errors_total", query="obs", reason="cardinality") == 10


def test_storage_allocation_is_exported_for_the_utilization_alert(fresh_db):
    from exporter.config import parse_config

    config = parse_config(f"collectors: []\ntargets:\n  db: {{dsn: '{fresh_db}', storage_allocation: 10GB}}\n")
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "pgvigil_storage_allocation_bytes", target="db") == 10e9


def test_array_and_json_label_values(fresh_db):
    config = config_for(fresh_db, """
  - {name: a, sql: "SELECT ARRAY['x','y'] AS arr, '{\\"k\\": 1}'::json AS j, 1 AS v", \
labels: [arr, j], metrics: {v: {}}}
  - {name: b, sql: "SELECT ARRAY[1, 2] AS arr, 1 AS v", labels: [arr], \
metrics: {v: {type: gauge_histogram, buckets: [1]}}}
""")
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "a_v", arr="{x,y}", j='{"k":1}') == 1
    assert sample(samples, "b_v_gcount", arr="{1,2}") == 1
