"""Faults against a real PostgreSQL: the exporter keeps answering and recovers on its own.

Server restarts, terminated backends, lock waits, a stalled network (a loopback proxy that stops
forwarding), a full max_connections, and SIGHUP/SIGTERM on a real `pgvigil serve` process. No test
measures wall-clock time: each checks what the scrape reports and that it answered at all.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from conftest import config_for, parse_exposition, sample

from exporter.dev.throwaway import ThrowawayCluster, free_port
from exporter.server import start_server

QUERY = "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n"
FAST = "defaults: {timeout: 1s, lock_timeout: 500ms, connect_timeout: 1s, scrape_timeout: 5s}\n"


def scrape(url: str, timeout_header: float | None = None, path: str = "/metrics") -> tuple[int, dict, str]:
    """One HTTP scrape; the client timeout is generous, it only guards against a hung test."""
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(timeout_header)} if timeout_header else {}
    request = urllib.request.Request(url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read().decode()
            return response.status, parse_exposition(body) if path == "/metrics" else {}, body
    except urllib.error.HTTPError as exc:
        return exc.code, {}, exc.read().decode()


def pgvigil_sessions(pg: ThrowawayCluster, dbname: str = "postgres") -> list[tuple]:
    return pg.execute(f"SELECT pid, state FROM pg_stat_activity WHERE application_name = 'pgvigil' "
                      f"AND datname = '{dbname}'")


@pytest.fixture(scope="module")
def own_cluster():
    """A cluster of this module's own: these tests stop it, restart it and fill its connection slots."""
    with ThrowawayCluster(settings={"max_connections": "10", "superuser_reserved_connections": "3"},
                          preload=()) as pg:
        pg.execute("CREATE ROLE monitor LOGIN IN ROLE pg_monitor")
        pg.execute("CREATE ROLE crowd LOGIN")
        yield pg


# -- server stopped and started -------------------------------------------------------------------

def test_server_stop_and_start(own_cluster):
    pg = own_cluster
    handle = start_server(config_for(pg.dsn(), QUERY, FAST))
    try:
        status, samples, _ = scrape(handle.url)
        assert status == 200 and sample(samples, "pg_up", target="db") == 1
        pg.stop()
        for _ in range(2):  # down: still 200, self-metrics say why
            status, samples, _ = scrape(handle.url)
            assert status == 200
            assert sample(samples, "pg_up", target="db") == 0
            assert sample(samples, "q_x") is None
            assert sample(samples, "pg_exporter_last_scrape_error") == 1
            assert sample(samples, "pgvigil_scrape_duration_seconds") is not None
        assert scrape(handle.url, path="/health")[0] == 503
        assert scrape(handle.url, path="/")[0] == 200
        pg.start()
        status, samples, _ = scrape(handle.url)  # one scrape after the restart is enough
        assert status == 200
        assert sample(samples, "pg_up", target="db") == 1
        assert sample(samples, "q_x", target="db") == 1
        assert sample(samples, "pgvigil_query_success", target="db", query="q") == 1
    finally:
        handle.stop()
        if not (pg.datadir / "postmaster.pid").exists():
            pg.start()


# -- terminated backends ---------------------------------------------------------------------------

def test_backend_terminated_between_scrapes(fresh_db, cluster):
    dbname = fresh_db.rsplit("/", 1)[1]
    handle = start_server(config_for(fresh_db, QUERY + "  - {name: r, sql: 'SELECT 2 AS y', metrics: {y: {}}}\n"))
    try:
        assert sample(scrape(handle.url)[1], "q_x", target="db") == 1
        (old_pid, _), = pgvigil_sessions(cluster, dbname)
        assert cluster.execute(f"SELECT pg_terminate_backend({old_pid})") == [(True,)]
        status, samples, _ = scrape(handle.url)
        assert status == 200
        assert sample(samples, "pg_up", target="db") == 1
        assert sample(samples, "q_x", target="db") == 1 and sample(samples, "r_y", target="db") == 2
        assert sample(samples, "pgvigil_query_errors_total", query="q", reason="error") == 0  # reconnected, retried
        # the terminated backend sent its FATAL before exiting: it may still be listed for a moment
        wait_until(lambda: old_pid not in [pid for pid, _ in pgvigil_sessions(cluster, dbname)])
        (new_pid, _), = pgvigil_sessions(cluster, dbname)
        assert new_pid != old_pid
    finally:
        handle.stop()


def test_backend_terminated_during_a_query(fresh_db, cluster):
    dbname = fresh_db.rsplit("/", 1)[1]
    config = config_for(fresh_db, "  - {name: slow, sql: 'SELECT 1 AS x FROM pg_sleep(1)', allow_calls: [pg_sleep],"
                                  " metrics: {x: {}}}\n" + QUERY, "defaults: {timeout: 10s, scrape_timeout: 20s}\n")
    handle = start_server(config)
    killed = []

    def kill_when_running() -> None:
        for _ in range(200):
            rows = cluster.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}' "
                                   "AND application_name = 'pgvigil' AND query LIKE '%pg_sleep(1)%' "
                                   "AND state = 'active'")
            if rows:
                killed.extend(rows)
                return
            time.sleep(0.02)

    try:
        killer = threading.Thread(target=kill_when_running)
        killer.start()
        status, samples, _ = scrape(handle.url)
        killer.join()
        assert killed == [(True,)]
        assert status == 200
        assert sample(samples, "pg_up", target="db") == 1
        # The killed query was retried once on a new session; the next query ran too.
        assert sample(samples, "slow_x", target="db") == 1
        assert sample(samples, "q_x", target="db") == 1
        status, samples, _ = scrape(handle.url)
        assert sample(samples, "pgvigil_query_success", query="slow") == 1
    finally:
        handle.stop()


# -- lock waits -----------------------------------------------------------------------------------

@pytest.fixture
def locked_table(fresh_db):
    """A table another session holds an ACCESS EXCLUSIVE lock on, in an open transaction."""
    setup = psycopg.connect(fresh_db, autocommit=True)
    setup.cursor().execute("CREATE TABLE jobs (id int); INSERT INTO jobs VALUES (1), (2)")
    setup.close()
    holder = psycopg.connect(fresh_db)
    holder.cursor().execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
    yield fresh_db
    holder.rollback()
    holder.close()


@pytest.mark.parametrize("settings, ended_by", [
    ("lock_timeout: 300ms, timeout: 30s", "lock_timeout"),
    ("lock_timeout: 30s, timeout: 500ms", "statement_timeout"),
])
def test_a_query_blocked_on_a_lock_is_ended_by_its_timeouts(locked_table, settings, ended_by):
    config = config_for(locked_table, f"  - {{name: blocked, sql: 'SELECT count(*) AS n FROM jobs', {settings}, "
                                      "metrics: {n: {}}}\n" + QUERY, "defaults: {scrape_timeout: 60s}\n")
    handle = start_server(config)
    try:
        status, samples, _ = scrape(handle.url)
        assert status == 200
        assert sample(samples, "pgvigil_query_success", query="blocked") == 0
        assert sample(samples, "pgvigil_query_errors_total", query="blocked", reason="timeout") == 1
        assert sample(samples, "q_x", target="db") == 1  # the target's other queries still ran
        error = handle.exporter.runner.targets["db"].statuses["blocked"].error
        assert ("lock timeout" if ended_by == "lock_timeout" else "statement timeout") in error
    finally:
        handle.stop()


def test_a_blocked_query_does_not_hold_the_scrape_past_its_deadline(locked_table):
    # The query could wait 30 s; Prometheus announces a 3 s scrape timeout. The scrape answers with
    # the query reported as timed out, and the run finishes in the background.
    config = config_for(locked_table, "  - {name: blocked, sql: 'SELECT count(*) AS n FROM jobs', lock_timeout: 30s, "
                                      "timeout: 30s, metrics: {n: {}}}\n", "defaults: {scrape_timeout: 60s}\n")
    handle = start_server(config)
    try:
        status, samples, _ = scrape(handle.url, timeout_header=3)
        assert status == 200
        assert sample(samples, "pgvigil_query_success", query="blocked") == 0
        assert sample(samples, "pgvigil_query_late_total", query="blocked") == 1  # not failed: still running
        assert sample(samples, "pgvigil_query_errors_total", query="blocked", reason="timeout") == 0
        assert sample(samples, "pg_up", target="db") == 1
    finally:
        handle.stop()


# -- a stalled network ----------------------------------------------------------------------------

class StallingProxy:
    """A loopback TCP proxy in front of PostgreSQL that can stop forwarding (a network stall):
    connections stay open, bytes are held, nothing is refused or reset."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.stalled = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.stalled.is_set() and not self.closed.is_set():
                    time.sleep(0.02)  # hold the bytes: the peer just hears nothing
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_a_network_stall_is_cut_by_timeouts(cluster):
    proxy = StallingProxy(cluster.port)
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    handle = start_server(config_for(dsn, QUERY, FAST))
    try:
        status, samples, _ = scrape(handle.url, timeout_header=4)
        assert status == 200 and sample(samples, "q_x", target="db") == 1
        proxy.stalled.set()
        # Mid-session stall: the server's statement_timeout cannot reach us; the scrape deadline answers.
        status, samples, _ = scrape(handle.url, timeout_header=4)
        assert status == 200
        assert sample(samples, "q_x", target="db") is None
        assert sample(samples, "pgvigil_query_success", target="db", query="q") == 0
        assert (sample(samples, "pgvigil_query_errors_total", target="db", query="q", reason="timeout")
                + sample(samples, "pgvigil_query_late_total", target="db", query="q")) >= 1
        # Keep scraping through the stall: every scrape answers; the watchdog cuts the stalled socket
        # and connects anew, which stalls too and is ended by connect_timeout: the target reads as down.
        seen_down = False
        for _ in range(30):
            status, samples, _ = scrape(handle.url, timeout_header=4)
            assert status == 200
            if sample(samples, "pg_up", target="db") == 0:
                seen_down = True
                break
        assert seen_down
        assert "timeout" in (handle.exporter.runner.targets["db"].error or "")
        proxy.stalled.clear()
        for _ in range(30):  # the network is back: pgvigil recovers by itself
            status, samples, _ = scrape(handle.url, timeout_header=4)
            if sample(samples, "q_x", target="db") == 1:
                break
        assert sample(samples, "pg_up", target="db") == 1 and sample(samples, "q_x", target="db") == 1
    finally:
        handle.stop()
        proxy.close()


# -- max_connections ------------------------------------------------------------------------------

def test_max_connections_exhausted_then_freed(own_cluster):
    pg = own_cluster
    crowd = []
    try:
        while True:  # fill every slot a non-superuser may take
            try:
                crowd.append(psycopg.connect(pg.dsn(user="crowd"), connect_timeout=5))
            except psycopg.OperationalError as exc:
                assert "reserved" in str(exc) or "too many clients" in str(exc)
                break
        assert crowd
        handle = start_server(config_for(pg.dsn(user="monitor"), QUERY, FAST))
        try:
            status, samples, _ = scrape(handle.url)
            assert status == 200
            assert sample(samples, "pg_up", target="db") == 0
            error = handle.exporter.runner.targets["db"].error
            assert "reserved" in error or "too many clients" in error
            crowd.pop().close()
            for _ in range(50):  # the slot is freed as the backend exits
                status, samples, _ = scrape(handle.url)
                if sample(samples, "pg_up", target="db") == 1:
                    break
                time.sleep(0.1)
            assert sample(samples, "pg_up", target="db") == 1 and sample(samples, "q_x", target="db") == 1
        finally:
            handle.stop()
    finally:
        for conn in crowd:
            conn.close()


# -- signals on a real `pgvigil serve` ----------------------------------------------------------------

def write(path, text: str) -> None:
    # Written to a new file and renamed, so a reload never reads half a config.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def serve_config(dsn: str, query: str) -> str:
    return f"collectors: []\ntargets:\n  db:\n    dsn: {dsn}\nqueries:\n  - {{name: {query}, sql: 'SELECT 1 AS x', " \
           "metrics: {x: {}}}\n"


def wait_until(check, attempts: int = 100, pause: float = 0.1):
    for _ in range(attempts):
        result = check()
        if result:
            return result
        time.sleep(pause)
    raise AssertionError("condition never became true")


def test_sighup_reloads_and_sigterm_closes_sessions(tmp_path, fresh_db, cluster):
    dbname = fresh_db.rsplit("/", 1)[1]
    config, log = tmp_path / "pgvigil.yaml", tmp_path / "stderr.log"
    write(config, serve_config(fresh_db, "first"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(config),
                                 "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        def scraped():
            try:
                return scrape(url)[1]
            except OSError:
                return None

        samples = wait_until(scraped)
        assert sample(samples, "first_x", target="db") == 1
        # A valid new config: the new query set serves; the old sessions are closed, not leaked.
        write(config, serve_config(fresh_db, "second"))
        proc.send_signal(signal.SIGHUP)
        samples = wait_until(lambda: (s := scraped()) and sample(s, "second_x", target="db") == 1 and s)
        assert sample(samples, "first_x") is None
        assert len(wait_until(
            lambda: len(pgvigil_sessions(cluster, dbname)) == 1 and pgvigil_sessions(cluster, dbname))) == 1
        # An invalid one: rejected with its errors logged, the previous config keeps serving.
        write(config, "collectors: []\ntargets: {db: {dsn: x}}\nqueries:\n  - {name: third, sql: 1, metrics: {}}\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reload rejected" in log.read_text())
        text = log.read_text()
        assert f"{config}:4: queries[0].sql: expected a string, got the number 1" in text
        assert "Traceback" not in text
        samples = scraped()
        assert sample(samples, "second_x", target="db") == 1 and sample(samples, "pg_up", target="db") == 1
        assert proc.poll() is None
        assert len(pgvigil_sessions(cluster, dbname)) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert "pgvigil stopped; database sessions closed" in log.read_text()
    wait_until(lambda: pgvigil_sessions(cluster, dbname) == [])  # backends exit just after the client hangs up
