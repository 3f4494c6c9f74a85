"""HTTP endpoints: /metrics, /probe, /health and a landing page.

The database's misbehaviour never turns into a 5xx on /metrics: failures are
self-metrics. Only /health answers 503, by design, when a target is down.
"""
from __future__ import annotations

import html
import json
import logging
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

from prometheus_client.registry import Collector

from exporter import __version__, compression
from exporter.config import Config
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.discovery import health_of, http_sd
from exporter.scrape.exposition import CONTENT_TYPE
from exporter.scrape.runner import Runner, SessionFactory, open_session
from exporter.scrape.selfmetrics import ServingStats, process_registry, render_self_metrics
from exporter.scrape.session import shorten
from exporter.scrape.state import TargetState

log = logging.getLogger(__name__)

# Leave Prometheus this much of its scrape timeout to receive the answer.
SCRAPE_TIMEOUT_MARGIN = 0.5
# A client silent this long (waiting for its next request, or mid-read) is dropped.
CLIENT_IO_TIMEOUT = 30.0
# From a connection's first byte (or its accept, for the TLS handshake) to the end of the request's
# headers, however slowly the bytes trickle in: a slow-header client holds a thread no longer than this.
HEADER_DEADLINE = 10.0
# Sending one answer, however slowly the client reads.
RESPONSE_DEADLINE = 60.0


class Exporter:
    """The running state behind the HTTP server; `reload()` swaps in a new config atomically."""

    def __init__(self, config: Config, extra_collectors: Iterable[Collector] = (),
                 session_factory: SessionFactory = open_session, sampling: bool | None = None) -> None:
        self.config = config
        self._session_factory = session_factory
        # Sessions are sampled between scrapes (scrape/sampler.py) on real servers; a scripted fake
        # session (tests of scheduling) has no pg_stat_activity to sample unless a test asks for it.
        self._sampling = session_factory is open_session if sampling is None else sampling
        # Swapped as one value on reload, so a scrape never pairs one config's runner with another's families.
        self._serving = (self._runner(config), ScrapeText(config.queries))
        self.stats = ServingStats()
        self._extras = _started(extra_collectors)
        self.registry = process_registry([*self._extras, self.stats])
        self._reload_lock = threading.Lock()
        self._scraped = False  # the first scrape is logged with its duration and size
        # Seconds the latest answer took to assemble after its scrape, for /metrics (True) and /probe (False):
        # kept back from the next scrape's wait, so the answer is complete by the deadline.
        self._assembly: dict[bool, float] = {True: 0.0, False: 0.0}

    @property
    def runner(self) -> Runner:
        return self._serving[0]

    def metrics(self, scrape_timeout: float | None, only: list[str] | None = None) -> str:
        return b"".join(self.metrics_parts(scrape_timeout, only)).decode("utf-8")

    def metrics_parts(self, scrape_timeout: float | None, only: list[str] | None = None) -> list[bytes]:
        """One scrape as UTF-8 chunks: sent as they are, a large scrape is never joined or encoded whole."""
        runner, text = self._serving
        first = not self._scraped
        self._scraped = True
        if first:  # the first scrape of a large catalog takes seconds: say so while it runs
            log.info("first scrape: running the queries of %d target(s)", len(runner.targets))
        whole = only is None
        scrape = runner.scrape(scrape_timeout, only=only, reserve=self._assembly[whole])
        assembling = time.monotonic()
        parts = text.parts(scrape)
        self.stats.scraped(scrape.duration)
        parts.append(render_self_metrics(scrape, self.registry).encode("utf-8"))
        self._assembly[whole] = time.monotonic() - assembling
        if first:
            log.info("first scrape done in %.1f s: %d of %d queries succeeded, %d series, %d bytes",
                     scrape.duration, sum(o.included for o in scrape.outcomes), len(scrape.outcomes),
                     sum(o.status.series for o in scrape.outcomes if o.included), sum(map(len, parts)))
        return parts

    def reload(self, config: Config, extra_collectors: Iterable[Collector] = ()) -> bool:
        """Serve `config` from now on; False when it equals the config being served (nothing to do).

        Reloads run one at a time. A scrape that took the old runner finishes on it: close() cancels
        the old runner's queries on the server and ends its runs at once, so that scrape answers
        (200, without the abandoned queries) instead of waiting or failing."""
        with self._reload_lock:
            if config == self.config:
                return False
            old, old_extras = self.runner, self._extras
            _closed(old_extras)  # first: a log reader saves its positions before the new one loads them
            self.config, self._serving = config, (self._runner(config), ScrapeText(config.queries))
            self._extras = _started(extra_collectors, previous=old_extras)
            self.registry = process_registry([*self._extras, self.stats])
            old.close()
            return True

    def close(self) -> None:
        self.runner.close()
        _closed(self._extras)

    def _runner(self, config: Config) -> Runner:
        runner = Runner(config, self._session_factory, sampling=self._sampling)
        runner.samplers.start()
        return runner


def _started(collectors: Iterable[Collector], previous: Iterable[Collector] = ()) -> list[Collector]:
    """Collectors with a background part (the server log readers) start when they are served; after a
    reload, one that counts may first take over the counts of the collectors it replaces (`continue_from`)."""
    started, previous = list(collectors), list(previous)
    for collector in started:
        continue_from = getattr(collector, "continue_from", None)
        if continue_from is not None:
            continue_from(previous)
        start = getattr(collector, "start", None)
        if start is not None:
            start()
    return started


def _closed(collectors: Iterable[Collector]) -> None:
    for collector in collectors:
        close = getattr(collector, "close", None)
        if close is not None:
            close()

    def _runner(self, config: Config) -> Runner:
        runner = Runner(config, self._session_factory, sampling=self._sampling)
        runner.samplers.start()
        return runner


def scrape_budget(header: str | None, configured: float) -> float:
    """Seconds a scrape may take: Prometheus' announced timeout minus a margin, capped by config."""
    try:
        announced = float(header) if header else None
    except ValueError:
        announced = None
    if announced is None or announced <= 0:
        return configured
    return max(0.1, min(configured, announced - SCRAPE_TIMEOUT_MARGIN))


def _handler_class(exporter: Exporter, authorize: Callable[[str | None], bool] | None = None
                   ) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"pgvigil/{__version__}"
        protocol_version = "HTTP/1.1"
        # A client silent this long (mid-handshake or between requests) is dropped, so it
        # cannot hold a thread forever; Prometheus simply reconnects.
        timeout = CLIENT_IO_TIMEOUT

        def log_message(self, fmt: str, *args: object) -> None:  # route to logging, at debug
            log.debug("%s %s", self.address_string(), fmt % args)

        def setup(self) -> None:
            super().setup()
            _REAPER.watch(self.connection, HEADER_DEADLINE)  # the TLS handshake and the first request's headers

        def handle_one_request(self) -> None:
            if not _REAPER.watching(self.connection) and not self._next_request_started():
                self.close_connection = True
                return
            try:
                super().handle_one_request()
            finally:
                _REAPER.release(self.connection)

        def _next_request_started(self) -> bool:
            """Wait (up to the socket timeout) for a kept-alive connection's next request; its headers
            then have HEADER_DEADLINE."""
            try:
                if not self.rfile.peek(1):  # type: ignore[attr-defined]  # a BufferedReader
                    return False
            except OSError:
                return False
            _REAPER.watch(self.connection, HEADER_DEADLINE)
            return True

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            _REAPER.release(self.connection)  # the headers are in
            if authorize is not None and not authorize(self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="pgvigil", charset="UTF-8"')
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", "13")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(b"unauthorized\n")
                return
            url = urllib.parse.urlsplit(self.path)
            params = urllib.parse.parse_qs(url.query)
            routes: dict[str, Callable[[dict], tuple[int, str, bytes | list[bytes]]]] = {
                "/metrics": self.metrics, "/probe": self.probe, "/health": self.health, "/": self.landing,
                "/sd": self.service_discovery,
            }
            route = routes.get(url.path)
            if route is None:
                self.reply(404, "text/plain; charset=utf-8", b"not found\n")
                return
            try:
                answer = route(params)
            except Exception:  # a bug, not the database: log it, answer 500
                log.exception("error serving %s", url.path)
                answer = 500, "text/plain; charset=utf-8", b"internal error\n"
            self.reply(*answer)

        def reply(self, code: int, content_type: str, body: bytes | list[bytes]) -> None:
            """Send an answer; a client that hung up or reads too slowly is dropped (a debug line)."""
            chunks = [body] if isinstance(body, bytes) else body
            compressible = sum(map(len, chunks)) >= compression.MIN_BYTES
            encoded = compressible and compression.accepts_gzip(self.headers.get("Accept-Encoding"))
            if encoded:
                chunks = compression.gzipped(chunks)
            _REAPER.watch(self.connection, RESPONSE_DEADLINE)
            try:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                if compressible:
                    self.send_header("Vary", "Accept-Encoding")
                if encoded:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(sum(map(len, chunks))))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.writelines(chunks)
                    self.wfile.flush()
            except OSError as exc:  # BrokenPipe, ConnectionReset, a timeout, an SSL error
                log.debug("%s went away during the answer to %s: %s", self.address_string(), self.path, exc)
                self.close_connection = True
            finally:
                _REAPER.release(self.connection)

        do_HEAD = do_GET

        def budget(self) -> float:
            return scrape_budget(self.headers.get("X-Prometheus-Scrape-Timeout-Seconds"),
                                 exporter.config.defaults.scrape_timeout)

        def metrics(self, params: dict) -> tuple[int, str, list[bytes]]:
            return 200, CONTENT_TYPE, exporter.metrics_parts(self.budget())

        def probe(self, params: dict) -> tuple[int, str, bytes | list[bytes]]:
            # Only configured target names are accepted: never an address from the request.
            name = (params.get("target") or [""])[0]
            if not exporter.runner.known(name):
                known = ", ".join(sorted({*exporter.runner.targets, *exporter.runner.roots}))
                return 400, "text/plain; charset=utf-8", f"unknown target; configured targets: {known}\n".encode()
            return 200, CONTENT_TYPE, exporter.metrics_parts(self.budget(), only=[name])

        def health(self, params: dict) -> tuple[int, str, bytes]:
            # From state, in under a second whatever the targets do (Runner.health); `up` null is not
            # yet known (a database not visited yet, a list not read yet), which is not down.
            targets = exporter.runner.health()
            discovery = {status.target: health_of(status) for status in exporter.runner.discovery_status()}
            healthy = all(t["up"] is not False for t in (*targets.values(), *discovery.values()))
            body = {"status": "ok" if healthy else "degraded", "version": __version__, "targets": targets,
                    **({"discovery": discovery} if discovery else {})}
            return (200 if healthy else 503), "application/json", json.dumps(body, indent=2).encode() + b"\n"

        def service_discovery(self, params: dict) -> tuple[int, str, bytes]:
            """Prometheus http_sd: each target and discovered database, probed through this exporter.

            The targets name the exporter's own address: the host it was told to listen on, or, listening on
            every interface, the one this connection reached (as the socket says); never the request's `Host`
            header, which is the client's to write (a forged one would send every probe elsewhere)."""
            exporter.runner.refresh_discovery()
            local_host, port = self.connection.getsockname()[:2]
            address = host_port(getattr(self.server, "advertised_host", None) or local_host, port)
            groups = http_sd(exporter.runner.targets.values(), address)
            return 200, "application/json", json.dumps(groups, indent=2).encode() + b"\n"

        def landing(self, params: dict) -> tuple[int, str, bytes]:
            return 200, "text/html; charset=utf-8", render_landing(exporter).encode("utf-8")

    return Handler


def render_landing(exporter: Exporter) -> str:
    rows = []
    for name, state in exporter.runner.targets.items():
        for query in exporter.config.queries:
            status = state.statuses[query.name]
            if status.success is None:
                continue
            outcome = "ok" if status.success else f"failed: {shorten(status.error or '')}"
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(query.name)}</td>"
                        f"<td>{status.rows}</td><td>{status.duration * 1000:.1f} ms</td>"
                        f"<td>{html.escape(outcome)}</td></tr>")
    targets = "".join(f"<li>{html.escape(name)}: {target_status(state)}</li>"
                      for name, state in exporter.runner.targets.items()) + discovery_items(exporter)
    return (f"<!doctype html><html><head><title>pgvigil</title></head><body><h1>pgvigil {__version__}</h1>"
            f"<p><a href='/metrics'>/metrics</a> · <a href='/health'>/health</a></p><h2>Targets</h2><ul>{targets}</ul>"
            f"{queries_heading(exporter)}<table border='1' cellpadding='3'>"
            "<tr><th>target</th><th>query</th><th>rows</th><th>duration</th><th>last status</th></tr>"
            f"{''.join(rows)}</table>"
            "</body></html>\n")


def discovery_items(exporter: Exporter) -> str:
    """One line per discovery root: how many databases it monitors, and which it skipped and why."""
    items = []
    for status in exporter.runner.discovery_status():
        skipped = ", ".join(f"{count} {outcome.replace('_', ' ')}"
                            for outcome, count in status.skipped.items() if count)
        found = (f"{status.monitored} databases discovered" + (f" (skipped: {skipped})" if skipped else "")
                 if status.success else f"cannot list databases: {shorten(status.error or '')}"
                 if status.success is False else "databases not listed yet")
        items.append(f"<li>{html.escape(status.target)} (databases: {html.escape(found)})</li>")
    return "".join(items)


def target_status(state: TargetState) -> str:
    if state.up:
        return "up"
    if state.up is False:
        return "down: " + html.escape(shorten(state.error or ""))
    return "not yet scraped"


def queries_heading(exporter: Exporter) -> str:
    """The count must match the table: say which configured queries are not in it, and why."""
    configured = [query.name for query in exporter.config.queries]
    ran = {name for state in exporter.runner.targets.values() for name in configured
           if state.statuses[name].success is not None}
    idle = [name for name in configured if name not in ran]
    if not idle:
        return f"<h2>Queries ({len(configured)})</h2>"
    return (f"<h2>Queries: {len(ran)} of {len(configured)} ran</h2><p>Not run yet on any target "
            f"({len(idle)}): {html.escape(', '.join(idle))}. A query runs only on servers within its "
            "min_server_version/max_server_version and on the targets it names; the others wait for a scrape.</p>")


class _Reaper:
    """Drops connections that pass their deadline, whatever their thread is blocked on.

    A socket timeout bounds each read, not a request: a client sending one byte every 29 s would
    hold its thread forever. One thread for all connections, woken at the earliest deadline."""

    def __init__(self) -> None:
        self._deadlines: dict[socket.socket, float] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, seconds: float) -> None:
        with self._changed:
            self._deadlines[sock] = time.monotonic() + seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pgvigil-reaper", daemon=True)
                self._thread.start()
            self._changed.notify()

    def watching(self, sock: socket.socket) -> bool:
        return sock in self._deadlines

    def release(self, sock: socket.socket) -> None:
        with self._changed:
            self._deadlines.pop(sock, None)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                late = [sock for sock, deadline in self._deadlines.items() if deadline <= now]
                for sock in late:
                    del self._deadlines[sock]
                if not late:
                    self._changed.wait(min(self._deadlines.values(), default=now + 60) - now)
            for sock in late:
                _drop(sock)


def _drop(sock: socket.socket) -> None:
    """Unblock the thread serving `sock`: its read or write ends with an error and the handler returns."""
    log.debug("dropping a connection past its deadline")
    try:
        # The plain socket's shutdown, also for TLS: SSLSocket.shutdown would pull the SSL object
        # from under the thread using it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


_REAPER = _Reaper()


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Listening on every interface: /sd then names the interface each request came in on.
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    advertised_host: str | None = None  # the listen address's host, unless it is every interface's
    # listen() backlog: socketserver's default of 5 drops connections when many scrapers
    # (several Prometheus replicas, /probe fan-out) connect at the same moment.
    request_queue_size = 512

    def handle_error(self, request: object, client_address: tuple) -> None:
        # A client that fails the TLS handshake or hangs up mid-request is not our bug:
        # one debug line instead of socketserver's traceback on stderr.
        log.debug("connection from %s ended: %s", client_address[0], sys.exc_info()[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


@dataclass
class ServerHandle:
    server: ThreadingHTTPServer
    exporter: Exporter
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.exporter.close()


def make_server(exporter: Exporter, listen: str, wrap_socket: Callable | None = None,
                authorize: Callable[[str | None], bool] | None = None) -> ThreadingHTTPServer:
    """`wrap_socket` wraps the listening socket (TLS); `authorize(Authorization header) -> bool` gates every request."""
    host, port = split_listen(listen)
    server = (_Server6 if ":" in host else _Server)((host, port), _handler_class(exporter, authorize))
    server.advertised_host = None if host in WILDCARD_HOSTS else host
    if wrap_socket is not None:
        server.socket = wrap_socket(server.socket)
    return server


def extra_collectors(config: Config) -> list[Collector]:
    """Collectors beyond SQL: the backup state when the config has a backup section; the server logs."""
    collectors: list[Collector] = []
    if config.backup is not None:
        from exporter.backup.metrics import BackupStateCollector

        target = config.backup.target or config.targets[0].name
        collectors.append(BackupStateCollector(config.backup.dir, target))
    if any(t.log is not None for t in config.targets):
        from exporter.serverlog.collector import ServerLogCollector, followers_of

        collectors.append(ServerLogCollector(followers_of(config)))
    return collectors


def start_server(config: Config, listen: str = "127.0.0.1:0", extra_collectors: Iterable[Collector] = (),
                 wrap_socket: Callable | None = None,
                 authorize: Callable[[str | None], bool] | None = None) -> ServerHandle:
    """Serve in a background thread (for tests, the demo and embedding); returns a handle with .url and .stop()."""
    exporter = Exporter(config, extra_collectors)
    server = make_server(exporter, listen, wrap_socket, authorize)
    thread = threading.Thread(target=server.serve_forever, name="pgvigil-http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    scheme = "https" if wrap_socket is not None else "http"
    host = host.decode() if isinstance(host, bytes) else host
    shown = f"[{host}]" if ":" in host else host
    return ServerHandle(server=server, exporter=exporter, thread=thread, url=f"{scheme}://{shown}:{port}")
