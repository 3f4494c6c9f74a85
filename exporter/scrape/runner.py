"""Which queries run when: ttl cache, single flight, concurrency across targets, scrape deadline.

A scrape asks every target for a run. Each target has at most one run in
flight (single flight): concurrent scrapes wait on the same run instead of
hitting the database again. Targets run concurrently; queries of one target
run one after another on its session(s). A scrape waits until its deadline;
queries not finished by then are reported as timeouts while the run goes on
in the background, bounded by statement_timeout.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

from exporter.config import Config, QuerySpec, TargetSpec
from exporter.exposition import family_header, label_text
from exporter.samples import Histogram, InvalidValue, RenderedRun, render_rows
from exporter.targets import ConnectFailed, QueryFailed, ServerFacts, TargetSession

log = logging.getLogger(__name__)

ERROR_REASONS = ("error", "timeout", "invalid_value", "duplicate", "cardinality")
EXTENSION_REFRESH_SECONDS = 60.0
GIL_SWITCH_INTERVAL = 0.001
_run_ids = itertools.count(1)


@dataclass
class QueryStatus:
    """What pgvigil knows about one query on one target."""

    success: bool | None = None
    duration: float = 0.0
    rows: int = 0
    series: int = 0
    last_success: float | None = None
    finished_at: float = float("-inf")  # monotonic
    run_id: int = 0
    result: RenderedRun | None = None
    error: str | None = None
    errors: collections.Counter = field(default_factory=collections.Counter)
    reused_through: int = 0  # the latest run that skipped this query because its result was within ttl


class TargetState:
    """Sessions, run state and per-query status of one target."""

    def __init__(self, spec: TargetSpec, config: Config) -> None:
        self.spec = spec
        self.sessions = [TargetSession(spec, config.defaults) for _ in range(spec.pool_size)]
        self.session_locks = [threading.Lock() for _ in self.sessions]
        self.label_text = label_text([("target", spec.name), *spec.labels])
        self.up: bool | None = None
        self.error: str | None = None
        self.rtt: float | None = None
        self.statuses: dict[str, QueryStatus] = {q.name: QueryStatus() for q in config.queries}
        self.histograms: dict[str, dict[str, dict[tuple, Histogram]]] = {q.name: {} for q in config.queries}
        self.previous_run: dict[str, str] = {}
        self.inflight: concurrent.futures.Future | None = None
        self.inflight_run_id = 0
        self.extensions_checked = 0.0
        self.last_facts: ServerFacts | None = None

    @property
    def facts(self) -> ServerFacts | None:
        # While the session reconnects (after a stall or a killed backend) the last known facts
        # stand in, so the target's queries report as failed in that scrape instead of vanishing.
        facts = self.sessions[0].facts
        if facts is not None:
            self.last_facts = facts
        return facts or self.last_facts


@dataclass
class _Fetched:
    """A query's rows, waiting to be rendered."""

    columns: list[str]
    rows: list[tuple]
    previous: str | None
    start: float


_RETRY = object()  # _fetch_rows: the connection was lost, reconnect and run the query again


def _wait_rendered(rendering: concurrent.futures.Future | None) -> None:
    if rendering is not None:
        try:
            rendering.result()
        except concurrent.futures.CancelledError:  # close() dropped it: the runner is going away
            pass


@dataclass
class QueryOutcome:
    """One (target, query) as seen by one scrape."""

    target: TargetState
    query: QuerySpec
    status: QueryStatus
    included: bool
    timed_out: bool


@dataclass
class Scrape:
    outcomes: list[QueryOutcome]
    targets: list[TargetState]
    duration: float


class Runner:
    """Runs the configured queries against the configured targets for scrapes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.targets = {spec.name: TargetState(spec, config) for spec in config.targets}
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(128, max(4, len(self.targets) * 2)), thread_name_prefix="pgvigil-target")
        self._render_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(8, max(2, len(self.targets))), thread_name_prefix="pgvigil-render")
        # A session thread whose query result has arrived waits for the GIL while a render runs;
        # with the default 5 ms switch interval that wait is paid on each of a query's round trips.
        if sys.getswitchinterval() > GIL_SWITCH_INTERVAL:
            sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        self.families = _family_order(config.queries)
        self._logged: dict[tuple[str, str], str] = {}
        self._closed = False

    # -- scraping ----------------------------------------------------------
    def scrape(self, timeout: float | None = None, only: Iterable[str] | None = None) -> Scrape:
        start = time.monotonic()
        budget = self.config.defaults.scrape_timeout if timeout is None else timeout
        states = [self.targets[name] for name in (only or self.targets)]
        runs = {state.spec.name: self._start_run(state) for state in states}
        concurrent.futures.wait([f for f, _ in runs.values()], timeout=max(0.0, budget - (time.monotonic() - start)))
        outcomes = []
        now = time.monotonic()
        for state in states:
            future, run_id = runs[state.spec.name]
            for query in self.eligible_queries(state):
                outcomes.append(self._outcome(state, query, run_id, future.done(), now))
        return Scrape(outcomes=outcomes, targets=states, duration=time.monotonic() - start)

    def _start_run(self, state: TargetState) -> tuple[concurrent.futures.Future, int]:
        with self._lock:
            if state.inflight is None or state.inflight.done():
                state.inflight_run_id = next(_run_ids)
                state.inflight = self._pool.submit(self._run_target, state, state.inflight_run_id)
            return state.inflight, state.inflight_run_id

    def _outcome(self, state: TargetState, query: QuerySpec, run_id: int, run_done: bool, now: float) -> QueryOutcome:
        status = state.statuses[query.name]
        # Run ids grow, and a target's runs follow one another: a result from this run or a later
        # one, or one a later run still reused, is current for this scrape. (Under load a newer run
        # may already have started by the time a waiting scrape looks.)
        fresh = (status.run_id >= run_id or status.reused_through >= run_id
                 or (query.ttl > 0 and now - status.finished_at < query.ttl))
        if fresh:
            return QueryOutcome(state, query, status, included=bool(status.success), timed_out=False)
        if not run_done:
            status.errors["timeout"] += 1
            return QueryOutcome(state, query, status, included=False, timed_out=True)
        return QueryOutcome(state, query, status, included=False, timed_out=False)

    def eligible_queries(self, state: TargetState) -> list[QuerySpec]:
        """Queries that run on this target given its server's version, extensions and scope."""
        facts = state.facts
        if facts is None:
            return []
        return [q for q in self.config.queries if self._applies(q, state, facts) and self._owns(q, state, facts)]

    @staticmethod
    def _applies(query: QuerySpec, state: TargetState, facts: ServerFacts) -> bool:
        if query.targets is not None and state.spec.name not in query.targets:
            return False
        if query.requires_extension and query.requires_extension not in facts.extensions:
            return False
        return query.runs_on_version(facts.version)

    def _owns(self, query: QuerySpec, state: TargetState, facts: ServerFacts) -> bool:
        """Cluster-wide queries run on the first eligible target of each server only."""
        if query.scope != "cluster":
            return True
        for other in self.targets.values():
            other_facts = other.facts
            if other_facts is not None and other_facts.identity == facts.identity and self._applies(query, other, other_facts):
                return other is state
        return True

    # -- running -------------------------------------------------------------
    def _run_target(self, state: TargetState, run_id: int) -> None:
        if not self._connect(state, 0):
            return
        eligible = self.eligible_queries(state)
        due = [q for q in eligible if self._due(state, q)]
        for query in eligible:
            if not self._due(state, query):
                # Decided at the start of the run: the cached result serves this run's scrapes even
                # if its ttl runs out before the run ends (else the series would blink out).
                status = state.statuses[query.name]
                status.reused_through = max(status.reused_through, run_id)
        if len(state.sessions) == 1:
            self._run_queries(state, 0, due, run_id)
            return
        threads = []
        for i in range(len(state.sessions)):
            if i and not self._connect(state, i):
                continue
            share = due[i::len(state.sessions)]
            thread = threading.Thread(target=self._run_queries, args=(state, i, share, run_id), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()

    def _connect(self, state: TargetState, index: int) -> bool:
        if self._closed:  # a run still going after close() (reload, shutdown) must not reconnect
            return False
        session = state.sessions[index]
        with state.session_locks[index]:
            try:
                session.ensure_connected()
                if index == 0 and time.monotonic() - state.extensions_checked > EXTENSION_REFRESH_SECONDS:
                    session.refresh_extensions()
                    state.extensions_checked = time.monotonic()
            except (ConnectFailed, QueryFailed) as exc:
                if index == 0:
                    self._mark_down(state, str(exc))
                return False
        if index == 0:
            if state.up is False:
                log.info("target %s is reachable again", state.spec.name)
            state.up, state.error = True, None
        return True

    def _mark_down(self, state: TargetState, message: str) -> None:
        if state.up is not False or state.error != message:
            log.warning("target %s is unreachable: %s", state.spec.name, message)
        state.up, state.error = False, message

    @staticmethod
    def _due(state: TargetState, query: QuerySpec) -> bool:
        status = state.statuses[query.name]
        return query.ttl <= 0 or time.monotonic() - status.finished_at >= query.ttl

    def _run_queries(self, state: TargetState, index: int, queries: list[QuerySpec], run_id: int) -> None:
        # Each result is rendered on the render pool while the next query runs on the server:
        # psycopg2 releases the GIL while it waits for the server, so the two overlap.
        rendering: concurrent.futures.Future | None = None
        try:
            for query in queries:
                fetched = self._fetch_rows(state, index, query, run_id)
                if fetched is _RETRY:
                    # The connection was lost (server restart, terminated backend): reconnect once.
                    if not self._connect(state, index):
                        return
                    fetched = self._fetch_rows(state, index, query, run_id, final=True)
                if not isinstance(fetched, _Fetched):
                    continue
                _wait_rendered(rendering)
                try:
                    rendering = self._render_pool.submit(self._record_rows, state, query, run_id, fetched)
                except RuntimeError:  # closed (reload, shutdown) while this run goes on: render here
                    rendering = None
                    self._record_rows(state, query, run_id, fetched)
        finally:
            _wait_rendered(rendering)

    def _fetch_rows(self, state: TargetState, index: int, query: QuerySpec, run_id: int,
                    final: bool = False) -> object:
        """Run one query: its rows, None after a recorded failure, or _RETRY to reconnect and retry."""
        session = state.sessions[index]
        status = state.statuses[query.name]
        start = time.monotonic()
        with state.session_locks[index]:
            try:
                columns, rows, previous = self._fetch(state, session, query)
            except QueryFailed as exc:
                if exc.connection_lost and not final:
                    return _RETRY
                self._record_failure(state, query, status, exc.reason, str(exc), start, run_id)
                return None
        return _Fetched(columns, rows, previous, start)

    def _record_rows(self, state: TargetState, query: QuerySpec, run_id: int, fetched: "_Fetched") -> None:
        """Render a query's rows and record its status."""
        status = state.statuses[query.name]
        layout = status.result.layout if status.result is not None else None
        try:
            run = render_rows(query, fetched.columns, fetched.rows, state.label_text,
                              state.histograms[query.name], layout)
        except InvalidValue as exc:
            self._record_failure(state, query, status, "error", str(exc), fetched.start, run_id)
            return
        except Exception as exc:  # a bug must fail this query alone, counted, never the whole run
            log.exception("query %s on target %s: cannot render the result", query.name, state.spec.name)
            self._record_failure(state, query, status, "error", f"cannot render the result: {exc!r}",
                                 fetched.start, run_id)
            return
        if fetched.previous is not None:
            state.previous_run[query.name] = fetched.previous
        for reason in ("invalid_value", "duplicate", "cardinality"):
            status.errors[reason] += getattr(run.problems, reason)
        if run.problems.messages:
            self._log_problem(state, query, "; ".join(run.problems.messages))
        status.success, status.result, status.error = True, run, None
        status.rows, status.series = run.rows, run.series
        status.last_success = time.time()
        self._finish(state, query, status, fetched.start, run_id)

    def _fetch(self, state: TargetState, session: TargetSession, query: QuerySpec):
        sql, prelude = query.sql, None
        if query.uses_previous_run:
            previous = state.previous_run.get(query.name)
            literal = f"'{previous}'::timestamptz" if previous else "now()"
            sql = sql.replace("{{previous_run}}", literal)
            prelude = "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
        # One row past max_series tells that the result was cut; histogram rows are observations, not series.
        plain = all(m.type in ("gauge", "counter") for m in query.metrics)
        columns, rows = session.fetch(sql, timeout=query.timeout, lock_timeout=query.lock_timeout, prelude=prelude,
                                      limit=query.max_series + 1 if plain else None)
        return columns, rows, session.last_prelude if prelude else None

    def _record_failure(self, state: TargetState, query: QuerySpec, status: QueryStatus, reason: str,
                        message: str, start: float, run_id: int) -> None:
        status.success, status.result, status.error = False, None, message
        status.errors[reason] += 1
        self._log_problem(state, query, message)
        self._finish(state, query, status, start, run_id)

    @staticmethod
    def _finish(state: TargetState, query: QuerySpec, status: QueryStatus, start: float, run_id: int) -> None:
        status.duration = time.monotonic() - start
        status.finished_at = time.monotonic()
        status.run_id = run_id

    def _log_problem(self, state: TargetState, query: QuerySpec, message: str) -> None:
        key = (state.spec.name, query.name)
        if self._logged.get(key) != message:
            self._logged[key] = message
            log.warning("query %s on target %s: %s", query.name, state.spec.name, message)

    # -- health and lifecycle -----------------------------------------------
    def health(self, timeout: float = 2.0) -> dict[str, dict]:
        """Reachability and round-trip time of each target (a live SELECT 1 when the session is free)."""
        report = {}
        for name, state in self.targets.items():
            lock = state.session_locks[0]
            if lock.acquire(timeout=timeout):
                try:
                    state.rtt = state.sessions[0].ping()
                    if state.up is not True:
                        state.up, state.error = True, None
                except (ConnectFailed, QueryFailed) as exc:
                    self._mark_down(state, str(exc))
                finally:
                    lock.release()
            report[name] = {"up": bool(state.up), "rtt_seconds": state.rtt if state.up else None,
                            "error": state.error}
        return report

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._render_pool.shutdown(wait=False, cancel_futures=True)
        for state in self.targets.values():
            for lock, session in zip(state.session_locks, state.sessions):
                if not lock.acquire(timeout=0.2):
                    # A query is running: cancel it now rather than wait for its statement_timeout.
                    session.cancel()
                    if not lock.acquire(timeout=5):
                        session.close()
                        continue
                try:
                    session.close()
                finally:
                    lock.release()


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    type: str
    queries: tuple[str, ...]


def _family_order(queries: Iterable[QuerySpec]) -> list[Family]:
    """Metric families in config order; one family may come from several version-specific queries."""
    found: dict[str, Family] = {}
    for query in queries:
        for metric in query.metrics:
            known = found.get(metric.name)
            if known is None:
                found[metric.name] = Family(metric.name, metric.help, metric.type, (query.name,))
            else:
                found[metric.name] = Family(known.name, known.help, known.type, known.queries + (query.name,))
    return list(found.values())


def render_scrape_parts(runner: Runner, scrape: Scrape) -> list[bytes]:
    """Exposition of the query results of one scrape as UTF-8 chunks, ready to send without a join."""
    by_query: dict[str, list[RenderedRun]] = collections.defaultdict(list)
    for outcome in scrape.outcomes:
        if outcome.included and outcome.status.result is not None:
            by_query[outcome.query.name].append(outcome.status.result)
    parts: list[bytes] = []
    for family in runner.families:
        chunks = [run.lines.get(family.name, b"") for q in family.queries for run in by_query.get(q, ())]
        chunks = [c for c in chunks if c]
        if chunks:
            parts.append(family_header(family.name, family.help, family.type).encode("utf-8"))
            parts.extend(chunks)
    return parts


def render_scrape(runner: Runner, scrape: Scrape) -> str:
    """Exposition text of the query results of one scrape (self-metrics are rendered separately)."""
    return b"".join(render_scrape_parts(runner, scrape)).decode("utf-8")


def scrape_once(config: Config, timeout: float | None = None) -> str:
    """Run one full scrape and return the exposition text (query results and self-metrics)."""
    from exporter.selfmetrics import render_self_metrics

    runner = Runner(config)
    try:
        scrape = runner.scrape(timeout)
        return render_scrape(runner, scrape) + render_self_metrics(runner, scrape)
    finally:
        runner.close()

