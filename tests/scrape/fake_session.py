"""A scripted stand-in for TargetSession: the runner's scheduling tested in milliseconds, no database.

Each query's behaviour is chosen by a substring of its SQL: rows to return, an exception to raise,
or an Event to wait on (a query that "runs" until the test releases it or cancels it).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from exporter.config import Defaults, TargetSpec
from exporter.scrape.session import ConnectFailed, FetchResult, PreparedSql, QueryFailed, ServerFacts


@dataclass
class Script:
    """What the fake server does for SQL containing `match`."""

    match: str
    columns: list[str] = field(default_factory=lambda: ["x"])
    rows: list[tuple] = field(default_factory=lambda: [(1,)])
    gate: threading.Event | None = None  # wait for this before answering (cancel() also ends the wait)
    fail: Callable[[], Exception] | None = None  # raised instead of answering, once per entry in `failures`
    failures: int = 0
    prelude_value: str = "2026-12-01T00:00:00.000000+00:00"
    # Raised to capability.probe's LIMIT 0 run while `probe_failures` lasts; probes otherwise succeed,
    # are not gated and are not in `executed` (they read no rows), but are counted in `probes`.
    probe_fail: Callable[[], Exception] | None = None
    probe_failures: int = 0


class FakeServer:
    """Shared by every session the factory makes: the scripts, and a log of what ran."""

    def __init__(self, *scripts: Script, version: int = 150000, extensions: frozenset[str] = frozenset(),
                 identity: str = "server-1") -> None:
        self.scripts = list(scripts)
        self.version, self.extensions, self.identity = version, extensions, identity
        self.executed: list[str] = []
        self.executed_in: list[tuple[str | None, str]] = []  # (the session's database, SQL)
        self.probes: list[str] = []
        self.connects = 0
        self.refuse_connections = False
        self.database_extensions: dict[str, frozenset[str]] = {}  # by database: other extensions than `extensions`
        self.missing_databases: set[str] = set()  # a session to one of these fails to connect (dropped database)
        self.open = 0  # sessions connected now, and the most at once
        self.peak = 0
        self.cancels = 0
        self.connect_delay = 0.0  # seconds each connect takes (a real one: tens of milliseconds)
        self.sessions: list[FakeSession] = []
        self._lock = threading.Lock()

    def factory(self, spec: TargetSpec, defaults: Defaults) -> "FakeSession":
        session = FakeSession(self, spec)
        self.sessions.append(session)
        return session

    def runs_of(self, match: str) -> int:
        with self._lock:
            return sum(match in sql for sql in self.executed)

    def script_for(self, sql: str) -> Script:
        for script in self.scripts:
            if script.match in sql:
                return script
        raise AssertionError(f"no script for {sql!r}")

    def log(self, sql: str, database: str | None = None) -> None:
        with self._lock:
            self.executed.append(sql)
            self.executed_in.append((database, sql))


class FakeSession:
    def __init__(self, server: FakeServer, spec: TargetSpec) -> None:
        self.server = server
        self.spec = spec
        self._facts: ServerFacts | None = None
        self._cancelled = threading.Event()
        self.closed = False

    @property
    def facts(self) -> ServerFacts | None:
        return self._facts

    def ensure_connected(self) -> ServerFacts:
        if self._facts is None:
            if self.server.refuse_connections:
                raise ConnectFailed("connection refused")
            if self.spec.datname in self.server.missing_databases:
                raise ConnectFailed(f'database "{self.spec.datname}" does not exist')
            if self.server.connect_delay:
                time.sleep(self.server.connect_delay)
            with self.server._lock:
                self.server.connects += 1
                self.server.open += 1
                self.server.peak = max(self.server.peak, self.server.open)
            extensions = self.server.database_extensions.get(self.spec.datname or "", self.server.extensions)
            self._facts = ServerFacts(self.server.version, self.server.identity, extensions, self.spec.name)
        return self._facts

    def refresh_extensions(self) -> None:
        pass

    def run(self, prepared: PreparedSql, timeout: float, lock_timeout: float) -> FetchResult:
        if self._facts is None:
            raise QueryFailed("not connected", connection_lost=True)
        script = self.server.script_for(prepared.sql)
        if prepared.limit == 0:
            return self._probe(prepared, script)
        self.server.log(prepared.sql, self.spec.datname)
        if script.fail is not None and script.failures > 0:
            script.failures -= 1
            error = script.fail()
            if isinstance(error, QueryFailed) and error.connection_lost:
                self.close()
            raise error
        if script.gate is not None:
            self._cancelled.clear()
            while not script.gate.wait(0.01):
                if self._cancelled.is_set():
                    raise QueryFailed("canceling statement due to user request")
        rows = script.rows[:prepared.limit] if prepared.limit is not None else script.rows
        return FetchResult(script.columns, rows, script.prelude_value if prepared.prelude else None)

    def _probe(self, prepared: PreparedSql, script: Script) -> FetchResult:
        with self.server._lock:
            self.server.probes.append(prepared.sql)
        if script.probe_fail is not None and script.probe_failures > 0:
            script.probe_failures -= 1
            raise script.probe_fail()
        return FetchResult(script.columns, [])

    def ping(self) -> float:
        self.ensure_connected()
        return 0.001

    def cancel(self) -> None:
        self.server.cancels += 1
        self._cancelled.set()

    def close(self) -> None:
        self.closed = True
        if self._facts is not None:
            with self.server._lock:
                self.server.open -= 1
        self._facts = None
