"""Whole-cluster discovery: one configured target, every database of its server.

A target with `databases:` is a discovery root. Every `discovery_interval` it reads
pg_database through its own DSN and keeps one TargetState per database it may monitor,
named `<target>/<datname>` and labelled with `target` (the configured name) and `datname`.
Per-target scheduling stays the runner's: a discovered database is just another target.

Templates, databases with `datallowconn = false` and databases the role may not CONNECT
to are skipped and counted (pgvigil_discovery_databases{outcome}), never errors.

Every session to the root's server, discovery's own included, takes a slot of the
target's connection budget first, so however many databases there are, at most
`connection_budget` connections are open at once. When the databases outnumber the
budget, a database's connection is closed as soon as its run ends (idle connections
would hold slots the others wait for).
"""
from __future__ import annotations

import collections
import fnmatch
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

from psycopg.conninfo import make_conninfo

from exporter.config import Defaults, QuerySpec, TargetSpec
from exporter.scrape.session import ConnectFailed, FetchResult, PreparedSql, QueryFailed, ServerFacts, Session
from exporter.scrape.state import TargetState

log = logging.getLogger(__name__)

SessionFactory = Callable[[TargetSpec, Defaults], Session]

# Why a database is not monitored; each is a value of pgvigil_discovery_databases{outcome}.
MONITORED = "monitored"
SKIP_OUTCOMES = ("excluded", "template", "connections_not_allowed", "no_connect_privilege")

DATABASES_SQL = ("SELECT datname::text AS datname, datistemplate, datallowconn,"
                 " has_database_privilege(oid, 'CONNECT') AS may_connect FROM pg_database")


@dataclass(frozen=True)
class DatabaseList:
    """One reading of pg_database: the databases to monitor, and how many were skipped, by outcome."""

    monitored: tuple[str, ...]
    skipped: dict[str, int]


def classify(rows: Iterable[Sequence], include: Sequence[str], exclude: Sequence[str]) -> DatabaseList:
    """Which databases to monitor, from (datname, datistemplate, datallowconn, may_connect) rows."""
    monitored: list[str] = []
    skipped: collections.Counter[str] = collections.Counter()
    for datname, is_template, allow_connections, may_connect in rows:
        if not any(fnmatch.fnmatchcase(datname, p) for p in include) or any(
                fnmatch.fnmatchcase(datname, p) for p in exclude):
            skipped["excluded"] += 1
        elif is_template:
            skipped["template"] += 1
        elif not allow_connections:
            skipped["connections_not_allowed"] += 1
        elif not may_connect:
            skipped["no_connect_privilege"] += 1
        else:
            monitored.append(datname)
    return DatabaseList(tuple(sorted(monitored)), {o: skipped[o] for o in SKIP_OUTCOMES})


class ConnectionBudget:
    """At most `limit` sessions connected to one server at once; a session holds a slot while connected."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self.wait = wait  # seconds a session waits for a slot before its connect fails
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.open = 0
        self.peak = 0

    def acquire(self) -> bool:
        if not self._slots.acquire(timeout=self.wait):
            return False
        with self._lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        return True

    def release(self) -> None:
        with self._lock:
            self.open -= 1
        self._slots.release()


class BudgetedSession:
    """A Session that takes a slot of its server's budget to connect and gives it back on close."""

    def __init__(self, inner: Session, budget: ConnectionBudget) -> None:
        self.inner = inner
        self.budget = budget
        self._holding = False
        self._lock = threading.Lock()

    @property
    def facts(self) -> ServerFacts | None:
        return self.inner.facts

    def ensure_connected(self) -> ServerFacts:
        with self._lock:
            if not self._holding:
                if not self.budget.acquire():
                    raise ConnectFailed(f"no free connection within the connection budget ({self.budget.limit}) "
                                        f"after {self.budget.wait:g}s")
                self._holding = True
        try:
            return self.inner.ensure_connected()
        except ConnectFailed:
            self._give_back()
            raise

    def refresh_extensions(self) -> None:
        self.inner.refresh_extensions()

    def run(self, prepared: PreparedSql, timeout: float, lock_timeout: float) -> FetchResult:
        return self.inner.run(prepared, timeout, lock_timeout)

    def ping(self) -> float:
        self.ensure_connected()
        return self.inner.ping()

    def cancel(self) -> None:
        self.inner.cancel()

    def close(self) -> None:
        self.inner.close()
        self._give_back()

    def _give_back(self) -> None:
        with self._lock:
            if self._holding:
                self._holding = False
                self.budget.release()


@dataclass
class DiscoveryStatus:
    """What the latest reading of one root's database list found (for self-metrics, /health, the landing page)."""

    target: str
    success: bool | None = None
    error: str | None = None
    monitored: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {o: 0 for o in SKIP_OUTCOMES})
    refreshed_at: float | None = None  # unix time of the latest successful reading


def database_spec(root: TargetSpec, datname: str) -> TargetSpec:
    """The spec of one discovered database: the root's DSN with its dbname, one session."""
    return replace(root, name=f"{root.name}/{datname}", dsn=make_conninfo(root.dsn, dbname=datname), pool_size=1,
                   databases=(), exclude_databases=(), parent=root.name, datname=datname)


class Discovery:
    """The databases of one root target: read every `discovery_interval`, one TargetState each."""

    def __init__(self, spec: TargetSpec, defaults: Defaults, queries: Sequence[QuerySpec],
                 session_factory: SessionFactory) -> None:
        self.spec = spec
        self.defaults = defaults
        self.queries = queries
        self.session_factory = session_factory
        # A session waiting for a slot gives up within a scrape's time, so a scrape never hangs on the budget.
        self.budget = ConnectionBudget(spec.connection_budget, wait=defaults.scrape_timeout)
        self.status = DiscoveryStatus(spec.name)
        self.states: dict[str, TargetState] = {}  # by datname, sorted
        self._session = BudgetedSession(session_factory(spec, defaults), self.budget)
        self._next_refresh = float("-inf")  # monotonic
        self._lock = threading.Lock()

    @property
    def due(self) -> bool:
        return time.monotonic() >= self._next_refresh

    def request_refresh(self) -> None:
        """Read the list again at the next chance (a database's connect failed: it may have been dropped)."""
        self._next_refresh = float("-inf")

    def refresh(self) -> list[TargetState]:
        """Read pg_database again; returns the states that went away (the caller closes them)."""
        with self._lock:
            if not self.due:
                return []
            self._next_refresh = time.monotonic() + self.spec.discovery_interval
            try:
                found = self._read()
            except (ConnectFailed, QueryFailed) as exc:
                self._failed(str(exc))
                self._next_refresh = float("-inf")  # like an unreachable target: try again at the next scrape
                return []
            return self._apply(found)

    def _read(self) -> DatabaseList:
        try:
            self._session.ensure_connected()
            result = self._session.run(PreparedSql(DATABASES_SQL), timeout=self.defaults.timeout,
                                       lock_timeout=self.defaults.lock_timeout)
        finally:
            # Discovery runs once a minute: its slot serves the databases in between.
            self._session.close()
        return classify(result.rows, self.spec.databases, self.spec.exclude_databases)

    def _failed(self, message: str) -> None:
        if self.status.error != message:
            log.warning("target %s: cannot list its databases: %s", self.spec.name, message)
        self.status.success, self.status.error = False, message

    def _apply(self, found: DatabaseList) -> list[TargetState]:
        added = [d for d in found.monitored if d not in self.states]
        gone = [state for datname, state in self.states.items() if datname not in found.monitored]
        if added or gone:
            log.info("target %s: %d databases monitored (%s new, %s gone)", self.spec.name, len(found.monitored),
                     ", ".join(added) or "none", ", ".join(s.spec.datname or "" for s in gone) or "none")
        keep_open = len(found.monitored) < self.budget.limit  # one slot stays free for discovery itself
        states = {d: self.states.get(d) or self._state(d) for d in found.monitored}
        for index, state in enumerate(states.values()):
            # The first database runs the cluster-wide queries on every scrape: it keeps its connection
            # when the budget still leaves a slot for discovery and one for the other databases.
            state.close_when_idle = not (keep_open or index == 0 and self.budget.limit >= 3)
        self.states = states
        self.status = DiscoveryStatus(self.spec.name, True, None, len(found.monitored), found.skipped, time.time())
        for state in gone:
            state.removed = True
        return gone

    def _state(self, datname: str) -> TargetState:
        spec = database_spec(self.spec, datname)
        session = BudgetedSession(self.session_factory(spec, self.defaults), self.budget)
        return TargetState(spec, self.queries, [session])

    def close(self) -> None:
        self._session.close()


def health_of(status: DiscoveryStatus) -> dict[str, object]:
    """One root's discovery for /health: whether the list could be read, and what it found."""
    return {"up": bool(status.success), "error": status.error, "monitored": status.monitored,
            "skipped": dict(status.skipped)}


def http_sd(targets: Iterable[TargetState], address: str) -> list[dict[str, object]]:
    """Prometheus http_sd: one /probe target per configured target and discovered database.

    `instance` is set to the target's name: every probe goes to the same exporter address, and
    Prometheus' `up` series would otherwise collide. `__meta_` labels are there for relabeling."""
    groups: list[dict[str, object]] = []
    for state in targets:
        labels = {"__metrics_path__": "/probe", "__param_target": state.name, "instance": state.name,
                  "__meta_pgvigil_target": state.spec.configured_name}
        if state.spec.datname is not None:
            labels["__meta_pgvigil_datname"] = state.spec.datname
        groups.append({"targets": [address], "labels": labels})
    return groups
