"""Security: user SQL cannot write, secrets never leak, /probe never dials the request, TLS and basic auth.

Everything runs against a real PostgreSQL and a real HTTP(S) server; leaks are found by grepping
every output pgvigil produces for the password itself.
"""
from __future__ import annotations

import base64
import dataclasses
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import psycopg
import pytest
from conftest import config_for, parse_exposition, sample
from tls_support import make_certificates

from exporter.dev.throwaway import ThrowawayCluster, free_port
from exporter.scrape.assembly import scrape_once
from exporter.scrape.runner import Runner
from exporter.scrape.session import QueryFailed, TargetSession
from exporter.server import start_server
from exporter.webconfig import hash_password, parse_web_config

# -- user SQL cannot write ---------------------------------------------------------------------------

SETUP = """
CREATE TABLE precious (id int PRIMARY KEY, v text);
INSERT INTO precious SELECT g, 'row ' || g FROM generate_series(1, 5) g;
CREATE SEQUENCE precious_seq;
CREATE FUNCTION wipe() RETURNS int LANGUAGE sql AS $$ DELETE FROM precious; SELECT 1 $$;
CREATE FUNCTION sneaky() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('transaction_read_only', 'off', true);
  UPDATE precious SET v = 'pwned';
  RETURN 1;
END $$;
CREATE FUNCTION escalate() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  SET TRANSACTION READ WRITE;
  DROP TABLE precious;
  RETURN 1;
END $$;
"""

# Refused by `pgvigil check` (PostgreSQL's grammar says they are not one read-only query, or call a
# function read-only does not stop) and by the session again if they get that far.
NOT_A_QUERY = {
    "delete": "DELETE FROM precious RETURNING id AS n",
    "update": "UPDATE precious SET v = 'pwned' RETURNING id AS n",
    "drop": "DROP TABLE precious",
    "insert_cte": "WITH w AS (INSERT INTO precious VALUES (99, 'x') RETURNING id) SELECT id AS n FROM w",
    "nested_delete_cte": "SELECT * FROM (WITH w AS (DELETE FROM precious RETURNING id) SELECT id AS n FROM w) s",
    "smuggled_statement": "SELECT 1 AS n; DELETE FROM precious",
    "commit_then_write": "SELECT 1 AS n; COMMIT; TRUNCATE precious",
    # The subquery wrapper is closed early and reopened: balanced as a whole, three statements inside.
    "wrapper_escape": "SELECT 1 AS n) AS q; COMMIT; BEGIN READ WRITE; DELETE FROM precious WHERE id = 1; COMMIT;"
                      " SELECT * FROM (SELECT 1 AS n",
    "wrapper_escape_timeout": "SELECT 1 AS n) AS q; SET LOCAL statement_timeout = 0; SELECT * FROM (SELECT 1 AS n",
    "set_local": "SET LOCAL statement_timeout = 0",
    "select_into": "SELECT 1 AS n INTO copy_of_precious",
    "for_update": "SELECT id AS n FROM precious FOR UPDATE",
    "nextval": "SELECT nextval('precious_seq') AS n",
}
# One query each, though they look like more: they run, and what looks like a second statement is text.
ONE_QUERY_IN_DISGUISE = {
    "comment_hides_close": "SELECT 1 AS n /* ) AS q; DELETE FROM precious; SELECT * FROM ( */",
    # Two statements to a server with standard_conforming_strings=off, one to the check: the session pins it on.
    "backslash_quote": "SELECT 'a\\', '; DELETE FROM precious; SELECT 1 AS n --' AS x, 1 AS n",
    "dollar_quote": "SELECT $q$) AS q; DELETE FROM precious; SELECT * FROM ($q$ AS x, 1 AS n",
}
# Valid queries whose functions try to write: the read-only transaction stops them at run time.
WRITES_AT_RUN_TIME = {
    "function_with_delete": "SELECT wipe() AS n",
    "function_turning_off_read_only": "SELECT sneaky() AS n",
    "function_set_transaction_read_write": "SELECT escalate() AS n",
}


def _attempt(sql: str) -> str:
    quoted = sql.replace("'", "''")
    return f"  - {{name: attempt, sql: '{quoted}', metrics: {{n: {{}}}}}}\n"


def _assert_intact(cluster, name: str) -> None:
    """Same rows, same values, the sequence untouched, nothing created."""
    assert cluster.execute("SELECT count(*), count(*) FILTER (WHERE v LIKE 'row %') FROM precious", name) == [(5, 5)]
    assert cluster.execute("SELECT last_value, is_called FROM precious_seq", name) == [(1, False)]
    assert cluster.execute("SELECT to_regclass('copy_of_precious') IS NULL", name) == [(True,)]


@pytest.fixture(scope="module")
def victim_db(cluster):
    name = "sec_" + uuid.uuid4().hex[:8]
    dsn = cluster.create_database(name)
    cluster.execute(SETUP, name)
    yield name, dsn
    cluster.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    cluster.execute(f'DROP DATABASE "{name}"')


@pytest.mark.parametrize("sql", WRITES_AT_RUN_TIME.values(), ids=WRITES_AT_RUN_TIME.keys())
def test_user_sql_cannot_write(cluster, victim_db, sql):
    name, dsn = victim_db
    config = config_for(dsn, _attempt(sql))
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "pgvigil_query_success", query="attempt") == 0
    assert sample(samples, "pgvigil_query_errors_total", query="attempt", reason="error") == 1
    assert sample(samples, "attempt_n") is None
    _assert_intact(cluster, name)


@pytest.mark.parametrize("sql", NOT_A_QUERY.values(), ids=NOT_A_QUERY.keys())
def test_check_rejects_sql_that_is_not_one_query(victim_db, tmp_path, sql):
    _, dsn = victim_db
    path = tmp_path / "pgvigil.yaml"
    path.write_text(f"collectors: []\ntargets:\n  db:\n    dsn: {dsn}\nqueries:\n{_attempt(sql)}")
    done = subprocess.run([sys.executable, "-m", "exporter", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout
    assert f"{path}:6: queries[0].sql: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("sql", NOT_A_QUERY.values(), ids=NOT_A_QUERY.keys())
def test_the_session_refuses_sql_that_is_not_one_query(cluster, victim_db, sql):
    """Defence in depth: a QuerySpec built in code, past the config check, is still never sent."""
    name, dsn = victim_db
    config = config_for(dsn, _attempt("SELECT 1 AS n"))
    config = dataclasses.replace(config, queries=(dataclasses.replace(config.queries[0], sql=sql),))
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "pgvigil_query_errors_total", query="attempt", reason="error") == 1
    assert sample(samples, "attempt_n") is None
    _assert_intact(cluster, name)
    # Nothing of it reached the server: no statement pgvigil sent writes or ends a transaction.
    assert cluster.execute("SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%pgvigil_query%' "
                           "AND query ~* '(delete|update|insert|truncate|drop|commit|set local|into|for update)' "
                           f"AND dbid = (SELECT oid FROM pg_database WHERE datname = '{name}')") == [(0,)]


@pytest.mark.parametrize("sql", ONE_QUERY_IN_DISGUISE.values(), ids=ONE_QUERY_IN_DISGUISE.keys())
def test_a_second_statement_in_a_comment_or_string_is_text(cluster, victim_db, sql):
    name, dsn = victim_db
    config = config_for(dsn, _attempt(sql))
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "attempt_n") == 1
    _assert_intact(cluster, name)


def test_check_refuses_functions_read_only_does_not_stop(victim_db, tmp_path):
    _, dsn = victim_db
    path = tmp_path / "pgvigil.yaml"
    path.write_text(f"collectors: []\ntargets:\n  db:\n    dsn: {dsn}\nqueries:\n"
                    + _attempt("SELECT 1 AS n FROM (SELECT pg_advisory_lock(1), pg_notify('c', 'x')) s")
                    + _attempt("SELECT count(*) AS n FROM pg_stat_activity").replace("attempt", "fine"))
    done = subprocess.run([sys.executable, "-m", "exporter", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout
    errors = [line.strip() for line in done.stderr.splitlines()[1:]]
    assert [error.split("(): ")[0] for error in errors] == [  # then why: tests/test_sqlshape.py has the words
        f"{path}:6: queries[0].sql: query 'attempt' calls pg_advisory_lock",
        f"{path}:6: queries[0].sql: query 'attempt' calls pg_notify"]


def test_read_only_session_leaves_no_transaction_open(cluster, victim_db):
    name, dsn = victim_db
    config = config_for(dsn, "  - {name: ok, sql: 'SELECT count(*) AS n FROM precious', metrics: {n: {}}}\n")
    handle = start_server(config)
    try:
        urllib.request.urlopen(handle.url + "/metrics", timeout=30).read()
        states = cluster.execute(f"SELECT state FROM pg_stat_activity WHERE datname = '{name}' "
                                 "AND application_name = 'pgvigil'")
        assert states == [("idle",)]  # never "idle in transaction": every run is rolled back
    finally:
        handle.stop()


# -- abandoned queries are cancelled on the server ------------------------------------------------------

# Tries to outlive pgvigil: switches the statement timeout off for the session, then sleeps (the
# switching in a function: check refuses a session-level set_config written in the query).
SLEEPER = "SELECT 1 AS n FROM (SELECT lift_timeouts()) s, pg_sleep(120)"


def _create_lift_timeouts(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION lift_timeouts() RETURNS void LANGUAGE plpgsql AS $$ BEGIN"
                     " PERFORM set_config('statement_timeout', '0', false);"
                     " PERFORM set_config('lock_timeout', '0', false); END $$")


def _active(cluster, dbname: str) -> int:
    rows = cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgvigil' "
                           f"AND state = 'active' AND datname = '{dbname}'")
    return rows[0][0]


def _wait_for_active(cluster, dbname: str, count: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _active(cluster, dbname) == count:
            return True
        time.sleep(0.05)
    return _active(cluster, dbname) == count


def _sleeper_config(dsn: str, timeout: str = "60s", scrape_timeout: str = "30s"):
    _create_lift_timeouts(dsn)
    return config_for(dsn, f"  - {{name: sleeper, sql: \"{SLEEPER}\", allow_calls: [pg_sleep], timeout: {timeout},"
                           " metrics: {n: {}}}\n",
                      extra=f"defaults: {{scrape_timeout: {scrape_timeout}}}\n")


def test_a_query_past_the_scrape_deadline_ends_at_its_own_timeout(cluster, fresh_db):
    """set_config inside the query cannot lift the statement timeout already running for it."""
    dbname = fresh_db.rsplit("/", 1)[-1]
    # The query's own timeout (3 s) is well past the scrape's deadline (0.3 s): the scrape answers
    # before it even on a busy machine (1 s left 0.7 s for connecting and scheduling), then the
    # server ends the query at 3 s.
    runner = Runner(_sleeper_config(fresh_db, timeout="3s"))
    try:
        start = time.monotonic()
        scrape = runner.scrape(0.3)
        assert time.monotonic() - start < 3.0
        assert [o.timed_out for o in scrape.outcomes] == [True]
        assert _wait_for_active(cluster, dbname, 0, within=6.0)
    finally:
        runner.close()


def test_the_socket_watchdog_cancels_the_query_before_cutting_the_socket(cluster, fresh_db):
    dbname = fresh_db.rsplit("/", 1)[-1]
    config = _sleeper_config(fresh_db)
    session = TargetSession(config.targets[0], config.defaults)
    session.ensure_connected()
    conn = session._conn
    failed: list[Exception] = []

    def run() -> None:
        try:
            session.fetch("SELECT pg_sleep(120)", timeout=120, lock_timeout=1, wrap=False)
        except QueryFailed as exc:
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert _wait_for_active(cluster, dbname, 1, within=5.0)
    session._abandon(conn)  # what the watchdog does when the server's answer does not come
    thread.join(5)
    assert failed and not thread.is_alive()
    assert _wait_for_active(cluster, dbname, 0, within=3.0)
    session.close()


def test_a_reload_cancels_the_old_config_queries_and_the_waiting_scrape_answers(cluster, fresh_db):
    dbname = fresh_db.rsplit("/", 1)[-1]
    handle = start_server(_sleeper_config(fresh_db))
    try:
        answers: list[tuple[int, float]] = []

        def scrape() -> None:
            start = time.monotonic()
            with urllib.request.urlopen(handle.url + "/metrics", timeout=60) as response:
                response.read()
                answers.append((response.status, time.monotonic() - start))

        thread = threading.Thread(target=scrape)
        thread.start()
        assert _wait_for_active(cluster, dbname, 1, within=10.0)
        handle.exporter.reload(config_for(fresh_db, "  - {name: quick, sql: 'SELECT 1 AS n', metrics: {n: {}}}\n"))
        thread.join(10)
        assert answers and answers[0][0] == 200 and answers[0][1] < 10, answers
        assert _wait_for_active(cluster, dbname, 0, within=3.0)
    finally:
        handle.stop()


def test_shutdown_cancels_running_queries(cluster, fresh_db, tmp_path):
    dbname = fresh_db.rsplit("/", 1)[-1]
    path = tmp_path / "pgvigil.yaml"
    _create_lift_timeouts(fresh_db)
    path.write_text(f"collectors: []\ndefaults: {{scrape_timeout: 30s}}\ntargets:\n  db:\n    dsn: {fresh_db}\n"
                    f"queries:\n  - {{name: sleeper, sql: \"{SLEEPER}\", allow_calls: [pg_sleep], timeout: 60s,"
                    " metrics: {n: {}}}\n")
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(path),
                              "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    try:
        scraper = threading.Thread(target=_ignore_errors, args=(f"http://127.0.0.1:{port}/metrics",), daemon=True)
        deadline = time.monotonic() + 20
        while _active(cluster, dbname) == 0 and time.monotonic() < deadline:
            if not scraper.is_alive():
                scraper = threading.Thread(target=_ignore_errors, args=(f"http://127.0.0.1:{port}/metrics",),
                                           daemon=True)
                scraper.start()
            time.sleep(0.1)
        assert _active(cluster, dbname) == 1
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(20) == 0
        assert "Traceback" not in serve.stderr.read()
        assert _wait_for_active(cluster, dbname, 0, within=3.0)
    finally:
        serve.kill()
        serve.wait()


def _ignore_errors(url: str) -> None:
    """A scrape cut off by the shutdown under test: any way its answer ends is expected."""
    try:
        urllib.request.urlopen(url, timeout=60).read()
    except (OSError, urllib.error.URLError, http.client.HTTPException):  # IncompleteRead: cut mid-answer
        pass


# -- memory is bounded in bytes -------------------------------------------------------------------------

def test_label_values_past_max_label_bytes_never_leave_the_server(fresh_db):
    config = config_for(fresh_db, "  - {name: w, max_series: 1000, labels: [l], metrics: {v: {}}, sql: \"SELECT"
                                  " CASE WHEN g % 2 = 0 THEN repeat('x', 500000) ELSE 'short' || g END AS l, g AS v"
                                  " FROM generate_series(1, 1000) g\"}\n")
    text = scrape_once(config)
    samples = parse_exposition(text)
    assert len(text) < 100_000
    assert sample(samples, "w_v", l="short1") == 1 and sample(samples, "w_v", l="short999") == 999
    assert len([k for k in samples if k[0] == "w_v"]) == 500
    assert sample(samples, "pgvigil_query_errors_total", query="w", reason="cardinality") == 500


def test_max_label_bytes_and_max_query_bytes_are_overridable(fresh_db):
    rows = "SELECT repeat('y', 900) || g AS l, g AS v FROM generate_series(1, 1000) g"
    config = config_for(fresh_db, f"  - {{name: cut, max_query_bytes: 100000, labels: [l], metrics: {{v: {{}}}},"
                                  f" sql: \"{rows}\"}}\n"
                                  f"  - {{name: roomy, max_label_bytes: 10000, labels: [l], metrics: {{v: {{}}}},"
                                  f" sql: \"{rows.replace('900', '5000')}\"}}\n")
    text = scrape_once(config)
    samples = parse_exposition(text)
    cut = "".join(line + "\n" for line in text.splitlines() if line.startswith("cut_v{"))
    assert 90_000 < len(cut) <= 100_000
    assert sample(samples, "pgvigil_query_errors_total", query="cut", reason="cardinality") == 1
    assert len([k for k in samples if k[0] == "roomy_v"]) == 1000
    assert sample(samples, "pgvigil_query_errors_total", query="roomy", reason="cardinality") in (None, 0)


PEAK_RSS = """
import resource, sys
from exporter.config import parse_config
from exporter.scrape.assembly import scrape_once
config = parse_config(sys.stdin.read())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
text = scrape_once(config)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, len(text))
sys.stdout.write(text)
"""


def _peak_rss_growth(config_text: str) -> tuple[int, str]:
    """MiB the peak RSS of a fresh process grows by during one scrape, and the scrape's text."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS], input=config_text, capture_output=True, text=True,
                          timeout=300, check=True)
    first, _, text = done.stdout.partition("\n")
    return int(first.split()[0]), text


def test_histogram_observations_are_streamed_not_held(fresh_db):
    """2,000,000 observations with max_series 100 (issue 11: 5,000,000 took 1.6 GB)."""
    config = (f"collectors: []\ndefaults: {{scrape_timeout: 120s}}\ntargets:\n  db:\n    dsn: {fresh_db}\nqueries:\n"
              "  - {name: h, max_series: 100, timeout: 120s, labels: [l], metrics: {v: {type: histogram,"
              " buckets: [0.25, 0.5]}}, sql: \"SELECT (g % 150)::text AS l, (g % 4) / 4.0 AS v"
              " FROM generate_series(1, 2000000) g\"}\n")
    growth, text = _peak_rss_growth(config)
    samples = parse_exposition(text)
    counts = {labels: v for (name, labels), v in samples.items() if name == "h_v_count"}
    # The first 100 label sets seen (1 to 100) are kept, with every one of their observations.
    assert len(counts) == 100 and sum(counts.values()) == sum(len(range(k, 2_000_001, 150)) for k in range(1, 101))
    assert sample(samples, "h_v_bucket", l="7", le="0.25") == sample(samples, "h_v_count", l="7") // 2
    assert sample(samples, "pgvigil_query_errors_total", query="h", reason="cardinality") > 0
    assert growth < 100, f"peak RSS grew by {growth} MiB"


def test_a_query_at_every_byte_bound_stays_within_the_stated_memory(fresh_db):
    """10,000 rows of three labels just under max_label_bytes and five metrics: 300 MB of series text
    unbounded; bounded by max_query_bytes (16 MiB) and the fetch batch (docs/security.md)."""
    config = (f"collectors: []\ntargets:\n  db:\n    dsn: {fresh_db}\nqueries:\n"
              "  - {name: b, labels: [l1, l2, l3], metrics: {v1: {}, v2: {}, v3: {}, v4: {}, v5: {}}, sql: \"SELECT"
              " repeat('a', 2000) || g AS l1, repeat('b', 2040) AS l2, repeat('c', 2040) AS l3, g AS v1, g AS v2,"
              " g AS v3, g AS v4, g AS v5 FROM generate_series(1, 10000) g\"}\n")
    growth, text = _peak_rss_growth(config)
    assert len(text) < 17 * 1024 * 1024
    assert growth < 160, f"peak RSS grew by {growth} MiB"


# -- nothing outside a query takes a scrape down ------------------------------------------------------

def _serve(path, port: int) -> subprocess.Popen:
    serve = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(path),
                              "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
            return serve
        except (OSError, urllib.error.URLError):
            time.sleep(0.1)
    serve.kill()
    raise AssertionError("pgvigil serve did not start")


def test_sighup_storm_with_concurrent_scrapers(fresh_db, tmp_path):
    """SIGHUP every 10 ms, the config alternating between two versions, 8 scrapers: every answer a 200
    and none waits longer than its own queries take."""
    path = tmp_path / "pgvigil.yaml"
    versions = [f"collectors: [default]\ntargets:\n  db:\n    dsn: {fresh_db}\n",
                f"collectors: [default]\ntargets:\n  db:\n    dsn: {fresh_db}\n"
                "queries:\n  - {name: extra, sql: 'SELECT 1 AS n', metrics: {n: {}}}\n"]
    path.write_text(versions[0])
    port = free_port()
    serve = _serve(path, port)
    statuses: list[int] = []
    durations: list[float] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
                    response.read()
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            durations.append(time.monotonic() - start)

    scrapers = [threading.Thread(target=scrape) for _ in range(8)]
    try:
        for thread in scrapers:
            thread.start()
        deadline, sent = time.monotonic() + 4, 0
        while time.monotonic() < deadline:
            if sent % 10 == 0:
                path.write_text(versions[(sent // 10) % 2])
            serve.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.01)
        stop.set()
        for thread in scrapers:
            thread.join(30)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(20) == 0
        log = serve.stderr.read()
    finally:
        stop.set()
        serve.kill()
        serve.wait()
    assert len(statuses) > 20 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert max(durations) < 5, max(durations)
    assert "config reloaded" in log and "Traceback" not in log and "ERROR" not in log


def test_clients_hanging_up_early_log_no_error(fresh_db, tmp_path):
    path = tmp_path / "pgvigil.yaml"
    path.write_text(f"collectors: [default]\ntargets:\n  db:\n    dsn: {fresh_db}\n")
    port = free_port()
    serve = _serve(path, port)
    try:
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).status == 200
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(20) == 0
        log = serve.stderr.read()
    finally:
        serve.kill()
        serve.wait()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


def test_a_slow_header_client_is_dropped_at_the_header_deadline(fresh_db, monkeypatch):
    import exporter.server

    monkeypatch.setattr(exporter.server, "HEADER_DEADLINE", 1.0)
    handle = start_server(config_for(fresh_db, "  - {name: q, sql: 'SELECT 1 AS n', metrics: {n: {}}}\n"))
    host, port = urllib.parse.urlsplit(handle.url).netloc.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            start = time.monotonic()
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            closed = False
            while time.monotonic() - start < 8:  # a header byte every 0.2 s: each read is quick, the whole is not
                try:
                    sock.sendall(b"X")
                    if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                        closed = True
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                    break
                time.sleep(0.2)
            assert closed and time.monotonic() - start < 3
        # Kept-alive connections are not cut between requests by the header deadline.
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        sockets = []
        for _ in range(2):
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            sockets.append(connection.sock)
            time.sleep(1.5)
        connection.close()
        assert sockets[0] is sockets[1]  # the same connection served both, 1.5 s apart
    finally:
        handle.stop()


def test_a_huge_postgresql_error_is_truncated_everywhere(fresh_db, caplog):
    """invalid input syntax for type integer quotes the whole 20 MB value."""
    config = config_for(fresh_db, "  - {name: huge, sql: \"SELECT repeat('x', 20000000)::int AS n\","
                                  " metrics: {n: {}}}\n")
    handle = start_server(config)
    try:
        metrics = urllib.request.urlopen(handle.url + "/metrics", timeout=60).read()
        landing = urllib.request.urlopen(handle.url + "/", timeout=60).read()
        health = urllib.request.urlopen(handle.url + "/health", timeout=60).read()
    finally:
        handle.stop()
    assert b'pgvigil_query_errors_total{target="db",query="huge",reason="error"} 1.0' in metrics
    assert b"xxxxxxxxxx" in landing and b"more characters" in landing
    for body in (metrics, landing, health):
        assert len(body) < 20_000
    logged = [record.getMessage() for record in caplog.records if "huge" in record.getMessage()]
    assert logged and max(map(len, logged)) < 2_000


# -- secrets never leak --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scram_cluster():
    """A cluster that really checks passwords (scram) for TCP logins other than the superuser's."""
    pg = ThrowawayCluster(preload=())
    pg.init()
    (pg.datadir / "pg_hba.conf").write_text(
        "local all all trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n")
    pg.start()
    try:
        yield pg
    finally:
        pg.cleanup()


def _secret() -> str:
    # Unique and URL-safe, so a grep hit can only be a leak of this exact password.
    return "pw-" + uuid.uuid4().hex


def _dsn_with(pg: ThrowawayCluster, user: str, password: str, dbname: str = "postgres") -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{pg.port}/{dbname}"


def test_dsn_password_never_leaks(scram_cluster, tmp_path):
    pg = scram_cluster
    inline, via_env, in_file, wrong = _secret(), _secret(), _secret(), _secret()
    for role, password in (("inline_user", inline), ("env_user", via_env), ("file_user", in_file)):
        pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE pg_monitor")
    dsn_file = tmp_path / "file.dsn"
    dsn_file.write_text(_dsn_with(pg, "file_user", in_file) + "\n")
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"""\
collectors: [default]
targets:
  inline: {{dsn: "{_dsn_with(pg, 'inline_user', inline)}"}}
  from_env: {{dsn: "postgresql://env_user:${{PGVIGIL_TEST_PASSWORD}}@127.0.0.1:{pg.port}/postgres"}}
  from_file: {{dsn_file: {dsn_file}}}
  wrong_password: {{dsn: "{_dsn_with(pg, 'inline_user', wrong)}"}}
  missing_db: {{dsn: "{_dsn_with(pg, 'inline_user', inline, 'no_such_db')}"}}
  unreachable: {{dsn: "postgresql://inline_user:{inline}@127.0.0.1:{free_port()}/postgres"}}
queries:
  - {{name: failing, sql: "SELECT 1/0 AS x", metrics: {{x: {{}}}}}}
  - {{name: bad_value, sql: "SELECT 'text' AS x", metrics: {{x: {{}}}}}}
""")
    secrets = (inline, via_env, in_file, wrong)
    port = free_port()
    web_config = tmp_path / "web.yml"
    web_config.write_text("basic_auth_users:\n  prom: " + hash_password("scrape-pass", cost=4) + "\n")
    env = {**os.environ, "PGVIGIL_TEST_PASSWORD": via_env}
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(config),
                             "--listen", f"127.0.0.1:{port}", "--log-level", "debug",
                             "--web-config", str(web_config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = []
    try:
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": "Basic " + base64.b64encode(b"prom:scrape-pass").decode()}
        metrics = _wait_for(base + "/metrics", auth)
        samples = parse_exposition(metrics)
        assert sample(samples, "pg_up", target="inline") == 1
        assert sample(samples, "pg_up", target="from_env") == 1
        assert sample(samples, "pg_up", target="from_file") == 1
        assert sample(samples, "pg_up", target="wrong_password") == 0
        assert sample(samples, "pg_up", target="missing_db") == 0
        outputs.append(metrics)
        for path in ("/metrics", "/health", "/", "/probe?target=inline", "/probe?target=wrong_password",
                     "/probe?target=" + urllib.parse.quote(_dsn_with(pg, "inline_user", inline)), "/nope"):
            outputs.append(_get(base + path, auth)[1])
        outputs.append(_get(base + "/metrics", {})[1])  # the 401 page
        os.kill(proc.pid, signal.SIGHUP)  # a reload logs the config summary again
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    outputs += [stdout, stderr]
    assert "password authentication failed" in stderr  # the failures were logged...
    assert "no_such_db" in stderr
    check = subprocess.run([sys.executable, "-m", "exporter", "check", "--config", str(config), "--connect"],
                           env=env, capture_output=True, text=True, timeout=120)
    outputs += [check.stdout, check.stderr]
    assert "password authentication failed" in check.stdout
    for secret in secrets:
        for text in outputs:
            assert secret not in text  # ...but never with a password


def test_config_errors_never_echo_the_dsn(tmp_path):
    secret = _secret()
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"""\
targets:
  a: {{dsn: "postgresql://u:{secret}@h/db", dns_typo: "postgresql://u:{secret}@h/db", pool_size: 0}}
  b: {{dsn: "postgresql://u:{secret}@h/db", dsn_file: /nonexistent}}
  "c d": "postgresql://u:{secret}@h/db"
  e: {{dsn: ["postgresql://u:{secret}@h/db"]}}
""")
    result = subprocess.run([sys.executable, "-m", "exporter", "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "unknown key 'dns_typo'" in result.stderr
    assert secret not in result.stdout + result.stderr


MALFORMED_DSNS = {
    # libpq's parse errors quote pieces of the DSN: a password must not be one of them.
    "unquoted_space": "host=127.0.0.1 port=1 password=first SECRET dbname=x",
    "bad_port_keyword": "host=127.0.0.1 port=SECRET password=SECRET",
    "bad_port_uri": "postgresql://u:SECRET@127.0.0.1:SECRET/db",
    "bad_percent_encoding": "postgresql://u:SECRET%zz@127.0.0.1:1/db",
    "unterminated_quote": "host=127.0.0.1 port=1 password='first SECRET",
    "space_in_uri": "postgresql://u:first SECRET@127.0.0.1:1/db",
    "bad_query_parameter": "postgresql://u:SECRET@127.0.0.1:1/db?SECRET",
}


@pytest.mark.parametrize("dsn", MALFORMED_DSNS.values(), ids=MALFORMED_DSNS.keys())
def test_malformed_dsns_do_not_leak_their_password(dsn, caplog):
    from exporter.config import parse_config
    from exporter.server import Exporter, render_landing

    secret = _secret()
    config = parse_config(f'collectors: []\ntargets:\n  a: {{dsn: "{dsn.replace("SECRET", secret)}"}}\n')
    exporter = Exporter(config)
    try:
        with caplog.at_level("DEBUG"):  # raw records, before the log handler's own scrubbing
            outputs = [exporter.metrics(5.0), str(exporter.runner.health()), render_landing(exporter)]
    finally:
        exporter.close()
    assert sample(parse_exposition(outputs[0]), "pg_up", target="a") == 0
    outputs += [record.getMessage() for record in caplog.records]
    assert all(secret not in text for text in outputs)


def _get(url: str, headers: dict, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_for(url: str, headers: dict, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = _get(url, headers)
            assert status == 200, (status, body)
            return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- /probe never dials an address from the request -----------------------------------------------------

def test_probe_never_connects_to_an_address_from_the_request(fresh_db):
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)
    trap.settimeout(0.5)
    port = trap.getsockname()[1]
    handle = start_server(config_for(fresh_db, "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n"))
    try:
        for target in (f"127.0.0.1:{port}", f"postgresql://postgres@127.0.0.1:{port}/postgres",
                       f"host=127.0.0.1 port={port} dbname=postgres", "db ", "DB", "../db", ""):
            status, body = _get(handle.url + "/probe?target=" + urllib.parse.quote(target), {})
            assert status == 400
            assert body == "unknown target; configured targets: db\n"
        with pytest.raises(socket.timeout):
            trap.accept()  # nobody dialled the trap
        status, body = _get(handle.url + "/probe?target=db", {})
        assert status == 200
        assert sample(parse_exposition(body), "q_x", target="db") == 1
    finally:
        handle.stop()
        trap.close()


# -- TLS and basic auth ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _client_context(certs, cert=None, key=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture(scope="module")
def tls_server(cluster, certificates, tmp_path_factory):
    web = parse_web_config(f"""\
tls_server_config:
  cert_file: {certificates.server_cert}
  key_file: {certificates.server_key}
basic_auth_users:
  prometheus: {hash_password("right-pass", cost=4)}
  other: {hash_password("other-pass", cost=4)}
""", source="web.yml")
    config = config_for(cluster.dsn(), "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n")
    handle = start_server(config, wrap_socket=web.wrap_socket(), authorize=web.authorizer())
    yield handle
    handle.stop()


@pytest.mark.parametrize("headers, expected", [
    (_basic("prometheus", "right-pass"), 200),
    (_basic("other", "other-pass"), 200),
    (_basic("prometheus", "wrong-pass"), 401),
    (_basic("prometheus", "other-pass"), 401),  # another user's password
    (_basic("nobody", "right-pass"), 401),
    (_basic("prometheus", ""), 401),
    (_basic("prometheus", "right-pass" + "x" * 80), 401),  # beyond bcrypt's 72 bytes
    ({"Authorization": "Bearer right-pass"}, 401),
    ({"Authorization": "Basic not-base64!"}, 401),
    ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, 401),
    ({}, 401),
], ids=["right", "second-user", "wrong-password", "other-users-password", "unknown-user", "empty-password",
        "too-long", "bearer", "garbage", "no-colon", "none"])
def test_tls_scrape_with_basic_auth(tls_server, certificates, headers, expected):
    assert tls_server.url.startswith("https://")
    for path in ("/metrics", "/health", "/", "/probe?target=db"):
        status, body = _get(tls_server.url + path, headers, _client_context(certificates))
        assert status == expected, path
        if expected == 401:
            assert body == "unauthorized\n"
    if expected == 200:
        _, body = _get(tls_server.url + "/metrics", headers, _client_context(certificates))
        assert sample(parse_exposition(body), "q_x", target="db") == 1


def test_a_401_asks_for_basic_auth(tls_server, certificates):
    request = urllib.request.Request(tls_server.url + "/metrics")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30, context=_client_context(certificates))
    assert raised.value.code == 401
    assert raised.value.headers["WWW-Authenticate"] == 'Basic realm="pgvigil", charset="UTF-8"'


def test_tls_port_refuses_plain_http_and_untrusted_clients_refuse_it(tls_server, certificates):
    plain = tls_server.url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(plain + "/metrics", timeout=10).read()
    with pytest.raises(urllib.error.URLError) as raised:  # a client that does not trust our CA
        urllib.request.urlopen(tls_server.url + "/metrics", timeout=10, context=ssl.create_default_context())
    assert isinstance(raised.value.reason, ssl.SSLCertVerificationError)
    # The server is unharmed by both.
    status, _ = _get(tls_server.url + "/health", _basic("prometheus", "right-pass"), _client_context(certificates))
    assert status == 200


def test_a_silent_client_does_not_block_other_scrapes(tls_server, certificates):
    host, port = urllib.parse.urlsplit(tls_server.url).netloc.rsplit(":", 1)
    with socket.create_connection((host, int(port))):  # connects, never starts the handshake
        status, _ = _get(tls_server.url + "/metrics", _basic("prometheus", "right-pass"), _client_context(certificates))
    assert status == 200


def test_client_certificates_are_required_and_verified(cluster, certificates):
    web = parse_web_config(f"""\
tls_server_config:
  cert_file: {certificates.server_cert}
  key_file: {certificates.server_key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {certificates.ca}
  min_version: TLS13
""")
    config = config_for(cluster.dsn(), "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n")
    handle = start_server(config, wrap_socket=web.wrap_socket(), authorize=web.authorizer())
    try:
        good = _client_context(certificates, certificates.client_cert, certificates.client_key)
        status, body = _get(handle.url + "/metrics", {}, good)
        assert status == 200 and "q_x{" in body
        for context in (_client_context(certificates),  # no certificate
                        _client_context(certificates, certificates.other_client_cert, certificates.other_client_key)):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                _get(handle.url + "/metrics", {}, context)
        old = _client_context(certificates, certificates.client_cert, certificates.client_key)
        old.maximum_version = ssl.TLSVersion.TLSv1_2  # below min_version TLS13
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _get(handle.url + "/metrics", {}, old)
    finally:
        handle.stop()
