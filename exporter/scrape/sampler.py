"""Sessions sampled between scrapes: where the server's time goes, as counters Prometheus can rate().

A scrape every 15 s sees pg_stat_activity once: a lock wait of 2 s in every 10 s is mostly missed.
A sampler reads pg_stat_activity every `sample_interval` (1 s by default) on a connection of its own,
independent of scrapes, and adds the interval's seconds to the label set of every session it sees
(waitprofile.py bounds the label sets). rate() of the counter is the average number of active sessions
(AAS) by wait event; a session active with no wait event is on CPU (wait_event_type="CPU").

pg_stat_activity is cluster-wide, so there is one sampler per server: per configured target, and per
discovery root (its DSN's database, which speaks for the server; its connection is one slot of the
root's connection budget). Two configured targets of one server: the first in config order samples,
the others stand by (they would count every session twice).

The sampler goes through the same session layer as queries (session.py, transaction.py: read-only
transaction, RESET ALL, pinned search_path and timeouts). It never piles up: samples run one after
another on their own thread, and the ticks that pass while one overruns are skipped and counted. A lost
connection (pg_terminate_backend, a server restart) is reconnected at the next tick, then backing off
to BACKOFF_MAX_SECONDS while it keeps failing. It samples only while its target is up, as the scrapes
found it: it never connects before the first scrape reached the server, nor takes the last free
connection from a scrape. It stops when its runner closes (shutdown, reload).

Where pg_wait_sampling is installed in its database and the role may read it, the sampler reads the
extension's profile instead of polling (waitsampling.py): same counters, labels and bounds; the
choice is made at each connect, and pgvigil_sampler_source says which it is.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from exporter.config import Defaults, TargetSpec
from exporter.logs import loggable
from exporter.scrape import waitsampling
from exporter.scrape.budget import BudgetedSession, ConnectionBudget
from exporter.scrape.exposition import family_header
from exporter.scrape.rows import name_bytes, name_text
from exporter.scrape.session import ConnectFailed, PreparedSql, QueryFailed, ServerFacts, Session, TargetSession
from exporter.scrape.targets import TargetSet
from exporter.scrape.waitprofile import WaitProfile, bounded

log = logging.getLogger(__name__)

WAITS = "pg_wait_sampled_seconds_total"
STATEMENTS = "pg_wait_sampled_statement_seconds_total"
WAIT_LABELS = ("datname", "usename", "application_name", "backend_type", "state", "wait_event_type", "wait_event")
STATEMENT_LABELS = ("datname", "queryid", "wait_event_type", "wait_event")
# Tenants choose these; the rest of a label set is PostgreSQL's own closed vocabulary.
WAIT_FOLDED = ("datname", "usename", "application_name")
STATEMENT_FOLDED = ("datname", "queryid")
APPLICATION_NAME = "pgvigil-sampler"  # the sampler's session in pg_stat_activity (abandon.py cancels it too)
CPU = "CPU"  # wait_event_type and wait_event of a session active with no wait event
# The label sets exported are chosen again this often (waitprofile.py).
ROTATION_SECONDS = 300.0
BACKOFF_MAX_SECONDS = 30.0
# A discovery root samples only when its budget leaves, besides the sampler's slot, one for discovery,
# one for the DSN's database and one for the other databases.
MIN_BUDGET = 4
# Rows read per sample at most (grouped server-side, so one row per distinct label set): a server with
# more distinct label sets than this among its sessions has the rest counted in no row of this sample.
MAX_ROWS = 10000

HELP = {
    WAITS: "Seconds of sessions sampled from pg_stat_activity every sample_interval (or read from pg_wait_sampling's "
           "profile where installed: pgvigil_sampler_source), by database, user, "
           "application, backend type, state and wait event (wait_event_type=\"CPU\": active with no wait "
           "event); rate() is the average number of sessions; the top sample_top label sets, the rest as "
           "datname/usename/application_name=\"other\"",
    STATEMENTS: "Seconds of active sessions sampled running each statement (queryid, as in pg_stat_statements; "
                "PostgreSQL 14+ with compute_query_id), by wait event; the top sample_top, the rest as "
                "queryid=\"other\"",
}


def sample_sql(version: int) -> str:
    """One sample, grouped on the server: a row per label set (and statement) with its session count.

    Idle sessions are left out, and background processes idling in their main loop (wait_event_type
    Activity, state NULL): neither is time spent on anything. The sampler's own session too, and the
    sessions of other roles the monitoring role may not see (it needs pg_read_all_stats: pg_monitor)."""
    queryid = ("CASE WHEN a.state OPERATOR(pg_catalog.=) 'active' AND a.query_id OPERATOR(pg_catalog.<>) 0"
               " THEN a.query_id::pg_catalog.text END" if version >= 140000 else "NULL::pg_catalog.text")
    # Database and user names as their bytes (discovery.py's way): a name made in a SQL_ASCII database
    # need not be UTF-8, and a row the driver cannot read would drop its sessions from the sample unseen.
    return (f"SELECT {name_bytes('a.datname')} AS datname, {name_bytes('a.usename')} AS usename,"
            " a.application_name, a.backend_type, a.state, a.wait_event_type, a.wait_event,"
            f" {queryid} AS queryid, pg_catalog.count(*) AS sessions"
            " FROM pg_catalog.pg_stat_activity a"
            " WHERE a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()"
            " AND (a.state OPERATOR(pg_catalog.<>) 'idle'"
            " OR a.state IS NULL AND a.wait_event_type IS DISTINCT FROM 'Activity'"
            # another role's session the monitoring role may not see (no pg_read_all_stats): no state, no
            # wait event; it would read as CPU. Left out: the sampler counts only what it can see.
            " AND a.query IS DISTINCT FROM '<insufficient privilege>')"
            " GROUP BY 1, 2, 3, 4, 5, 6, 7, 8")


def _name(value: object) -> str:
    """A name read as bytes (name_bytes), as a label value."""
    return bounded(name_text(value))


@dataclass
class SamplerStats:
    """What the sampler did since it started (self-metrics)."""

    samples: int = 0  # samples taken
    skipped: int = 0  # ticks passed while a sample overran
    failures: int = 0  # samples (or connects) that failed
    seconds: float = 0.0  # wall time spent taking samples


class Sampler:
    """Samples one server's pg_stat_activity on its own thread; `label_text`: the target's constant labels."""

    def __init__(self, name: str, label_text: str, session: Session, interval: float, capacity: int,
                 defaults: Defaults, speaks: Callable[["Sampler"], bool] = lambda sampler: True,
                 rotation: float = ROTATION_SECONDS, clock: Callable[[], float] = time.monotonic,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.name = name
        self.label_text = label_text
        self.session = session
        self.interval = interval
        self.defaults = defaults
        self.speaks = speaks
        self.ready = ready  # whether the target is up, as its scrapes found it
        self.clock = clock
        self.stats = SamplerStats()
        self.waits = WaitProfile(WAIT_LABELS, WAIT_FOLDED, capacity, rotation)
        self.statements = WaitProfile(STATEMENT_LABELS, STATEMENT_FOLDED, capacity, rotation)
        self.identity: str | None = None  # the server's, once connected
        self.standing_by = False  # another sampler speaks for this server
        self._lock = threading.Lock()  # the profiles and stats: the sampler writes, scrapes read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = 0.0
        self._log_name = loggable(name)
        self._failed_with: str | None = None
        # pg_wait_sampling (waitsampling.py): its schema when its profile is read, chosen at each connect
        self.source = waitsampling.POLLING
        self._profile_schema: str | None = None
        self._profile = waitsampling.ProfileDelta()
        self._chosen_for: object = None  # the ServerFacts (a connection) the source was chosen for
        self._told: set[str] = set()  # why the profile is not read: logged once each

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"pgvigil-sampler-{self.name}", daemon=True)
        self._thread.start()

    # -- the loop ------------------------------------------------------------
    def _loop(self) -> None:
        tick = self.clock()
        try:
            while not self._stop.wait(max(0.0, tick - self.clock())):
                started = self.clock()
                pause = self._take()
                ended = self.clock()
                with self._lock:
                    self.stats.seconds += ended - started
                tick += self.interval
                if pause:
                    tick = max(tick, ended + pause)
                if ended > tick:  # overran: the ticks that passed are skipped, never caught up
                    missed = int((ended - tick) // self.interval) + 1
                    tick += missed * self.interval
                    with self._lock:
                        self.stats.skipped += missed
        finally:
            self.session.close()

    def _take(self) -> float:
        """One sample; the seconds to wait before the next try when the connection failed (0: none)."""
        if not self.ready():
            # The target is not up (not scraped yet, or its scrapes cannot reach it): the sampler does not
            # knock on its own, and never takes (nor keeps) the connection a scrape needs (max_connections).
            self.session.close()
            return 0.0
        try:
            facts = self.session.ensure_connected()
            self.identity = facts.identity
            if not self.speaks(self):
                self.standing_by = True
                self.session.close()  # its slot and connection serve better elsewhere
                return BACKOFF_MAX_SECONDS
            self.standing_by = False
            if facts is not self._chosen_for:
                self._choose_source(facts)
            if not (self._profile_schema is not None and self._read_profile(facts.version)):
                result = self.session.run(PreparedSql(sample_sql(facts.version), limit=MAX_ROWS),
                                          timeout=self.defaults.timeout, lock_timeout=self.defaults.lock_timeout)
                self._record(result.columns, result.rows)
        except (ConnectFailed, QueryFailed) as exc:
            return self._failed(exc)
        except Exception as exc:  # noqa: BLE001 (a sampler that dies would stop sampling for good, silently)
            log.error("sampler of target %s: unexpected %s", self._log_name, type(exc).__name__)
            return self._failed(ConnectFailed(f"unexpected {type(exc).__name__}"))
        self._backoff = 0.0
        if self._failed_with is not None:
            log.info("sampler of target %s: sampling again", self._log_name)
            self._failed_with = None
        return 0.0

    # -- pg_wait_sampling ----------------------------------------------------
    def _choose_source(self, facts: ServerFacts) -> None:
        """At each connect: read pg_wait_sampling's profile when installed here and readable, else poll."""
        self._profile.restart()
        schema = dict(facts.extension_schemas).get(waitsampling.EXTENSION)
        why = None
        if schema is not None:
            rows = self.session.run(PreparedSql(waitsampling.PROBE_SQL), timeout=self.defaults.timeout,
                                    lock_timeout=self.defaults.lock_timeout).rows
            why = waitsampling.unusable(rows[0] if rows else None)
        self._use(schema if why is None else None, why)
        self._chosen_for = facts  # after the probe: a probe that failed is tried again at the next tick

    def _use(self, schema: str | None, why: str | None) -> None:
        self._profile_schema = schema
        self.source = waitsampling.EXTENSION if schema is not None else waitsampling.POLLING
        if why is not None and why not in self._told:
            self._told.add(why)
            log.warning("sampler of target %s: pg_wait_sampling is installed but not used (%s): sampling "
                        "pg_stat_activity instead", self._log_name, why)

    def _read_profile(self, version: int) -> bool:
        """One read of the profile; False: the profile cannot be read after all (polling from now on)."""
        assert self._profile_schema is not None
        sent = self.clock()
        try:
            result = self.session.run(
                PreparedSql(waitsampling.read_sql(self._profile_schema, version), prelude=waitsampling.SETTINGS_SQL,
                            limit=MAX_ROWS), timeout=self.defaults.timeout, lock_timeout=self.defaults.lock_timeout)
        except QueryFailed as exc:
            if exc.connection_lost or exc.reason == "timeout":
                self._profile.restart()
                raise
            self._use(None, f"reading its profile failed: {loggable(str(exc))}")
            return False
        settings = list(result.prelude or ()) + [None, None]
        period = waitsampling.period_seconds(settings[0])
        if period is None or len(result.rows) >= MAX_ROWS:
            self._use(None, "its profile_period is not a number of ms between 1 and 60000" if period is None else
                      f"its profile has {MAX_ROWS} rows or more: it keeps every pid until it is reset")
            return False
        cpu_in_profile = str(settings[1]).lower() in ("on", "true", "1")
        found = self._profile.read(result.columns, result.rows, period, cpu_in_profile, self.interval, sent)
        if found is None:  # a baseline (first read, or the profile was reset): counted from the next read
            with self._lock:
                self.stats.samples += 1
            return True
        waits, statements = found
        # WaitProfile counts sessions × interval: the seconds become the interval's average sessions.
        with self._lock:
            self.waits.add({k: v / self.interval for k, v in waits.items()}, self.interval)
            self.statements.add({k: v / self.interval for k, v in statements.items()}, self.interval)
            self.stats.samples += 1
        return True

    def _failed(self, exc: Exception) -> float:
        lost = isinstance(exc, ConnectFailed) or getattr(exc, "connection_lost", False)
        if lost:
            self.session.close()
        message = str(exc)
        if message != self._failed_with:
            log.warning("sampler of target %s: %s", self._log_name, loggable(message))
            self._failed_with = message
        with self._lock:
            self.stats.failures += 1
        # The first retry at the next tick (a terminated session reconnects at once), then backing off.
        self._backoff = min(BACKOFF_MAX_SECONDS, self._backoff * 2 or self.interval)
        return self._backoff if self._backoff > self.interval else 0.0

    def _record(self, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
        index = {name: i for i, name in enumerate(columns)}
        waits: dict[tuple[str, ...], float] = {}
        statements: dict[tuple[str, ...], float] = {}
        for row in rows:
            datname, usename, application, backend, state, event_type, event = (
                _name(row[index[name]]) for name in WAIT_LABELS)
            if not event_type and not event:
                event_type = event = CPU
            sessions = float(row[index["sessions"]] or 0)
            key = (datname, usename, application, backend, state, event_type, event)
            waits[key] = waits.get(key, 0.0) + sessions
            queryid = row[index["queryid"]]
            if queryid is not None:
                statement = (datname, bounded(queryid), event_type, event)
                statements[statement] = statements.get(statement, 0.0) + sessions
        with self._lock:
            self.waits.add(waits, self.interval)
            self.statements.add(statements, self.interval)
            self.stats.samples += 1

    # -- lifecycle -----------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end (close() waits for it)."""
        self._stop.set()

    def close(self, wait: float = 5.0) -> None:
        """Stop sampling: a sample under way is cancelled on the server; the connection is closed."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=0.2)
            if thread.is_alive():
                self.session.cancel()
                thread.join(timeout=wait)
        if thread is None:
            self.session.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- exposition ------------------------------------------------------------
    def lines(self) -> dict[str, list[str]]:
        with self._lock:
            return {WAITS: self.waits.render(WAITS, self.label_text),
                    STATEMENTS: self.statements.render(STATEMENTS, self.label_text)}

    def snapshot(self) -> tuple[SamplerStats, int]:
        with self._lock:
            return SamplerStats(**vars(self.stats)), self.waits.series + self.statements.series


class Samplers:
    """The samplers of one runner: one per server it monitors, started with it, stopped with it."""

    def __init__(self, specs: Iterable[TargetSpec], defaults: Defaults,
                 session_factory: Callable[[TargetSpec, Defaults], Session],
                 budgets: dict[str, ConnectionBudget], label_texts: dict[str, str],
                 ready: Callable[[str], bool] = lambda name: True) -> None:
        self.by_target: dict[str, Sampler] = {}
        for spec in specs:
            if spec.kind != "postgres" or spec.sample_interval <= 0:
                continue
            session = session_factory(spec, defaults)
            if isinstance(session, TargetSession):
                session.application_name = APPLICATION_NAME
            if spec.discovers:
                budget = budgets[spec.name]
                if budget.limit < MIN_BUDGET:
                    log.info("target %s: sessions are not sampled: its connection_budget (%d) leaves no "
                             "connection for the sampler (it needs %d or more)", loggable(spec.name), budget.limit,
                             MIN_BUDGET)
                    continue
                session = BudgetedSession(session, budget, defaults.scrape_timeout)
            self.by_target[spec.name] = Sampler(spec.name, label_texts[spec.name], session, spec.sample_interval,
                                                spec.sample_top, defaults, self._speaks,
                                                ready=functools.partial(ready, spec.name))

    @classmethod
    def of(cls, targets: TargetSet | None, session_factory: Callable[[TargetSpec, Defaults], Session]) -> "Samplers":
        """The samplers of a runner's targets (None: sampling off): each configured target's, each root's on a
        slot of its budget (which its discovery then keeps for it)."""
        if targets is None:
            return cls((), Defaults(), session_factory, {}, {})
        roots, configured = targets.roots, targets.configured

        def up(name: str) -> bool:
            """Whether the target (a root: its DSN's database) is up, as its scrapes found it."""
            root = roots.get(name)
            if root is None:
                return bool(configured[name].up)
            return any(state.up for state in root.states.values() if state.runs_cluster_queries)

        samplers = cls(targets.config.targets, targets.config.defaults, session_factory,
                       {name: root.budget for name, root in roots.items()},
                       {name: state.row_label_text for name, state in configured.items()}
                       | {name: root.label_text for name, root in roots.items()}, up)
        for name in samplers.by_target:
            if name in roots:
                roots[name].sampled = True
        return samplers

    def start(self) -> None:
        for sampler in self.by_target.values():
            sampler.start()

    def _speaks(self, sampler: Sampler) -> bool:
        """Whether `sampler` is the first in config order on its server (the others stand by)."""
        for other in self.by_target.values():
            if other is sampler:
                return True
            if other.identity is not None and other.identity == sampler.identity and not other.standing_by:
                return False
        return True

    def shown(self, configured_names: Iterable[str]) -> list[Sampler]:
        """The samplers a scrape of these targets shows (a discovery root's: when its DSN's database is shown)."""
        names = set(configured_names)
        return [s for name, s in self.by_target.items() if name in names and not s.standing_by]

    def close(self) -> None:
        for sampler in self.by_target.values():
            sampler.stop()  # all stop at once, then each is waited for
        for sampler in self.by_target.values():
            sampler.close()


def render_samplers(samplers: Sequence[Sampler]) -> list[bytes]:
    """The sampled families of a scrape, one header each, every shown sampler's lines."""
    parts: list[bytes] = []
    collected = [sampler.lines() for sampler in samplers]
    for family in (WAITS, STATEMENTS):
        lines = [line for found in collected for line in found[family]]
        if lines:
            parts.append(family_header(family, HELP[family], "counter").encode("utf-8"))
            parts.append("".join(lines).encode("utf-8"))
    return parts


def self_metric_families(samplers: Sequence[Sampler]) -> dict[str, tuple[str, str, list]]:
    """pgvigil_sampler_*: each shown sampler's own work, by target."""
    taken: list = []
    skipped: list = []
    failed: list = []
    seconds: list = []
    series: list = []
    sources: list = []
    for sampler in samplers:
        sources.append((f'{sampler.label_text},source="{sampler.source}"', 1))
        stats, count = sampler.snapshot()
        taken.append((sampler.label_text, stats.samples))
        skipped.append((sampler.label_text, stats.skipped))
        failed.append((sampler.label_text, stats.failures))
        seconds.append((sampler.label_text, stats.seconds))
        series.append((sampler.label_text, count))
    if not samplers:
        return {}
    values: dict[str, list] = dict(zip(SELF_METRICS, (taken, skipped, failed, seconds, series, sources)))
    return {name: (mtype, help_text, values[name]) for name, (mtype, help_text) in SELF_METRICS.items()}


# pgvigil's own series about its samplers, by target (docs/metrics.md lists them from here).
SELF_METRICS = {
    "pgvigil_sampler_samples_total": ("counter", "Samples of pg_stat_activity taken (or reads of pg_wait_sampling's "
                                      "profile)"),
    "pgvigil_sampler_skipped_total": ("counter", "Sample ticks skipped because the previous sample overran: "
                                      "samples never pile up"),
    "pgvigil_sampler_failures_total": ("counter", "Samples or connects of the sampler that failed"),
    "pgvigil_sampler_seconds_total": ("counter", "Wall-clock seconds the sampler spent taking samples "
                                      "(round trip included)"),
    "pgvigil_sampler_series": ("gauge", "Label sets the sampler exports now (bounded by sample_top, "
                               "plus the other remainders)"),
    "pgvigil_sampler_source": ("gauge", "1 for what the sampler reads: pg_wait_sampling (the extension's profile, "
                               "sampled by the server every profile_period) or pg_stat_activity (polled every "
                               "sample_interval)"),
}
SELF_METRIC_LABELS = {"pgvigil_sampler_source": ("source",)}  # labels besides the target's

