"""Whole-cluster discovery: one configured target, every database of its server.

A target with `databases:` is a discovery root. Every `discovery_interval` it reads
pg_database through its own DSN and keeps one TargetState per database it may monitor,
named `<target>/<datname>` and labelled with `target` (the configured name) and `datname`.
Per-target scheduling stays the runner's: a discovered database is just another target.

The DSN's database, the one the operator chose, speaks for the server: it alone runs the
cluster-wide queries, whatever the other databases are called or hold (a database sorting
first could shadow the statistics views for its own sessions, or lack an extension). When
the patterns leave it out, it is still connected to, for the cluster-wide queries only.

Templates, databases with `datallowconn = false`, databases the role may not CONNECT
to, and databases whose name is not UTF-8 (pgvigil could neither label nor connect to
them) are skipped and counted (pgvigil_discovery_databases{outcome}), never errors.
Names are read as bytes and decoded here, not by the driver, so one odd name costs
that database alone; every name is escaped in log lines (logs.loggable).

Every session to the root's server, discovery's own included, takes a slot of the
target's connection budget first (budget.py), so however many databases there are, at
most `connection_budget` connections are open at once. When the databases outnumber the
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
from exporter.logs import loggable
from exporter.scrape.budget import BudgetedSession, ConnectionBudget, NoConnectionSlot
from exporter.scrape.exposition import label_text
from exporter.scrape.rows import name_bytes
from exporter.scrape.session import ConnectFailed, PreparedSql, QueryFailed, Session
from exporter.scrape.state import TargetState

log = logging.getLogger(__name__)

SessionFactory = Callable[[TargetSpec, Defaults], Session]

# Why a database is not monitored; each is a value of pgvigil_discovery_databases{outcome}.
MONITORED = "monitored"
SKIP_OUTCOMES = ("excluded", "template", "connections_not_allowed", "no_connect_privilege", "undecodable_name")

# Names as their bytes (bytea, sent as hex): decode(..., 'escape') copies every byte but the backslash,
# which is doubled first, so no encoding check on the server or in the driver sees the name.
DATABASES_SQL = (f"SELECT {name_bytes('datname')} AS datname, datistemplate, datallowconn,"
                 " pg_catalog.has_database_privilege(oid, 'CONNECT') AS may_connect,"
                 " datname = pg_catalog.current_database() AS home FROM pg_catalog.pg_database")


@dataclass(frozen=True)
class DatabaseList:
    """One reading of pg_database: the databases to monitor, how many were skipped, by outcome, the
    DSN's database (`home`), and the names that are not UTF-8, escaped (logs.loggable)."""

    monitored: tuple[str, ...]
    skipped: dict[str, int]
    home: str | None = None
    undecodable: tuple[str, ...] = ()


def database_name(raw: bytes | memoryview | str) -> str | None:
    """A database name read as bytes, decoded; None when it is not UTF-8."""
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


def classify(rows: Iterable[Sequence], include: Sequence[str], exclude: Sequence[str]) -> DatabaseList:
    """Which databases to monitor, from (datname as bytes, datistemplate, datallowconn, may_connect, home) rows."""
    monitored: list[str] = []
    undecodable: list[str] = []
    skipped: collections.Counter[str] = collections.Counter()
    home = None
    for raw, is_template, allow_connections, may_connect, is_home in rows:
        datname = database_name(raw)
        # Patterns match a name that is not UTF-8 by its bytes as surrogates: "tenant_*" still takes it.
        shown = datname if datname is not None else bytes(raw).decode("utf-8", "surrogateescape")
        if is_home:
            home = datname
        if not any(fnmatch.fnmatchcase(shown, p) for p in include) or any(
                fnmatch.fnmatchcase(shown, p) for p in exclude):
            skipped["excluded"] += 1
        elif is_template:
            skipped["template"] += 1
        elif not allow_connections:
            skipped["connections_not_allowed"] += 1
        elif not may_connect:
            skipped["no_connect_privilege"] += 1
        elif datname is None:
            skipped["undecodable_name"] += 1
            undecodable.append(loggable(shown))
        else:
            monitored.append(datname)
    return DatabaseList(tuple(sorted(monitored)), {o: skipped[o] for o in SKIP_OUTCOMES}, home,
                        tuple(sorted(undecodable)))


@dataclass
class DiscoveryStatus:
    """What the latest reading of one root's database list found (for self-metrics, /health, the landing page).

    `not_yet_scraped` is filled in when asked (Runner.discovery_status): monitored databases never visited yet."""

    target: str
    success: bool | None = None
    error: str | None = None
    monitored: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {o: 0 for o in SKIP_OUTCOMES})
    refreshed_at: float | None = None  # unix time of the latest successful reading
    not_yet_scraped: int = 0


def database_spec(root: TargetSpec, datname: str) -> TargetSpec:
    """The spec of one discovered database: the root's DSN with its dbname, one session."""
    return replace(root, name=f"{root.name}/{datname}", dsn=make_conninfo(root.dsn, dbname=datname), pool_size=1,
                   databases=(), exclude_databases=(), parent=root.name, datname=datname)


class Discovery:
    """The databases of one root target: read every `discovery_interval`, one TargetState each,
    the DSN's database first."""

    def __init__(self, spec: TargetSpec, defaults: Defaults, queries: Sequence[QuerySpec],
                 session_factory: SessionFactory) -> None:
        self.spec = spec
        self.defaults = defaults
        self.queries = queries
        self.session_factory = session_factory
        self.log_name = loggable(spec.name)
        self.budget = ConnectionBudget(spec.connection_budget)
        self.status = DiscoveryStatus(spec.name)
        self.states: dict[str, TargetState] = {}  # by datname: the DSN's database, then the others by name
        self.home: str | None = None  # the DSN's database
        # A session waiting for a slot gives up within a scrape's time, so a scrape never hangs on the budget;
        # discovery's own reading goes before the databases' runs.
        self._session = BudgetedSession(session_factory(spec, defaults), self.budget, defaults.scrape_timeout,
                                        urgent=True)
        self._undecodable: tuple[str, ...] = ()
        self.sampled = False  # set by the runner: its sampler holds one slot of the budget (sampler.py)
        self.label_text = label_text([("target", spec.name), *spec.labels])  # the server's series (the sampler's)
        self._next_refresh = float("-inf")  # monotonic
        self._lock = threading.Lock()

    @property
    def due(self) -> bool:
        return time.monotonic() >= self._next_refresh

    def request_refresh(self) -> None:
        """Read the list again at the next chance (a database's connect failed: it may have been dropped)."""
        self._next_refresh = float("-inf")

    def refresh(self) -> list[TargetState]:
        """Read pg_database again if due; returns the states that went away (the caller closes them)."""
        with self._lock:
            if not self.due:
                return []
            self._next_refresh = time.monotonic() + self.spec.discovery_interval
            try:
                found = self._read()
            except NoConnectionSlot:
                self._next_refresh = float("-inf")  # the budget was busy, the server was not asked: not a failure
                return []
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
            log.warning("target %s: cannot list its databases: %s", self.log_name, loggable(message))
        self.status.success, self.status.error = False, message

    def _apply(self, found: DatabaseList) -> list[TargetState]:
        home = found.home
        # The DSN's database first: it speaks for the server (cluster-wide queries), whatever sorts before it.
        order = ([home] if home is not None else []) + [d for d in found.monitored if d != home]
        added = [d for d in order if d not in self.states]
        gone = [state for datname, state in self.states.items() if datname not in order]
        if added or gone:
            log.info("target %s: %d databases monitored (%s new, %s gone)", self.log_name, len(found.monitored),
                     ", ".join(map(loggable, added)) or "none",
                     ", ".join(loggable(s.spec.datname or "") for s in gone) or "none")
        for name in sorted(set(found.undecodable) - set(self._undecodable)):
            log.warning("target %s: database %s is skipped: its name is not UTF-8, which pgvigil cannot connect "
                        "with nor put in a label (rename it to monitor it)", self.log_name, name)
        self._undecodable = found.undecodable
        # one slot stays free for discovery itself (and one for the sampler)
        keep_open = len(order) < self.budget.limit - self.sampled
        monitored = set(found.monitored)
        states = {d: self.states.get(d) or self._state(d) for d in order}
        for datname, state in states.items():
            speaks = datname == home
            state.runs_cluster_queries, state.runs_database_queries = speaks, datname in monitored
            for session in state.sessions:
                if isinstance(session, BudgetedSession):
                    session.urgent = speaks  # it runs the cluster-wide queries on every scrape: it goes first
            # The DSN's database keeps its connection when the budget still leaves a slot for discovery
            # and one for the other databases.
            state.close_when_idle = not (keep_open or speaks and self.budget.limit - self.sampled >= 3)
        self.home, self.states = home, states
        self.status = DiscoveryStatus(self.spec.name, True, None, len(found.monitored), found.skipped, time.time())
        for state in gone:
            state.removed = True
        return gone

    def _state(self, datname: str) -> TargetState:
        spec = database_spec(self.spec, datname)
        session = BudgetedSession(self.session_factory(spec, self.defaults), self.budget, self.defaults.scrape_timeout)
        return TargetState(spec, self.queries, [session])

    def unvisited(self) -> int:
        """Databases monitored but never reached yet: not yet scraped (no pg_up), never reported down."""
        return sum(1 for state in self.states.values() if state.discovered_database and state.up is None)

    def close(self) -> None:
        self._session.close()


def health_of(status: DiscoveryStatus) -> dict[str, object]:
    """One root's discovery for /health: whether the list could be read, and what it found."""
    return {"up": status.success, "error": status.error, "monitored": status.monitored,
            "skipped": dict(status.skipped), "not_yet_scraped": status.not_yet_scraped}


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
