"""What pgvigil knows of each target and query between scrapes, and what one scrape saw.

A target owns its sessions (one lock each), its reachability, and per query the
status of the latest run with its rendered result. Recording a run's rows renders
them here, so a query's status and its text change together.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from exporter.config import QuerySpec, TargetSpec
from exporter.scrape.exposition import label_text
from exporter.scrape.picks import Picked
from exporter.scrape.render import Histogram, InvalidValue, RenderedRun, render_rows
from exporter.scrape.session import ConnectFailed, FetchResult, QueryFailed, ServerFacts, Session
from exporter.scrape.topchanged import TopChangedRows
from exporter.sqltext import masked_sql

log = logging.getLogger(__name__)

ERROR_REASONS = ("error", "timeout", "invalid_value", "duplicate", "cardinality")
ROW_PROBLEM_REASONS = ("invalid_value", "duplicate", "cardinality")


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
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    reused_through: int = 0  # the latest run that skipped this query because its result was within ttl


class EligibleMemo(NamedTuple):
    """The queries that run on a target, and what that was decided from (Runner.eligible_queries)."""

    facts: ServerFacts
    targets: dict
    skips: tuple[str, ...]
    with_skipped: bool
    queries: list[QuerySpec]


@dataclass
class Fetched:
    """A query's rows, waiting to be rendered; `start` is when its run began (monotonic)."""

    result: FetchResult
    start: float


class TargetState:
    """Sessions, reachability and per-query status of one target."""

    def __init__(self, spec: TargetSpec, queries: Sequence[QuerySpec], sessions: Sequence[Session]) -> None:
        self.spec = spec
        self.sessions = list(sessions)
        self.session_locks = [threading.Lock() for _ in self.sessions]
        # A discovered database's series carry `datname` too, except those of queries that label rows
        # with their own datname column, and cluster-wide ones (they speak for the whole server).
        self.row_label_text = label_text([("target", spec.configured_name), *spec.labels])
        self.label_text = self.row_label_text if spec.datname is None else label_text(
            [("target", spec.configured_name), ("datname", spec.datname), *spec.labels])
        self.close_when_idle = False  # set by discovery when the server's databases outnumber its connection budget
        self.removed = False  # a discovered database that is gone (dropped, excluded): no longer reported
        self.up: bool | None = None
        self.error: str | None = None
        self.rtt: float | None = None
        self.statuses: dict[str, QueryStatus] = {q.name: QueryStatus() for q in queries}
        self.histograms: dict[str, dict[str, dict[tuple[Any, ...], Histogram]]] = {q.name: {} for q in queries}
        self.top_changed = {q.name: TopChangedRows(q) for q in queries if q.top_changed is not None}
        self.previous_run: dict[str, str] = {}
        self.picks: dict[tuple[str, int], Picked] = {}  # (a pick's SQL, max_series) -> the ids it chose
        self.extensions_checked = float("-inf")
        self.probed_at = float("-inf")  # monotonic: when capability.probe last went through the queries
        self.skipped: dict[str, str] = {}  # query name -> why the role cannot run it here (capability.py)
        self.eligible_memo: EligibleMemo | None = None  # Runner.eligible_queries' last answer
        self.last_facts: ServerFacts | None = None
        self._logged: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def facts(self) -> ServerFacts | None:
        # While the session reconnects (after a stall or a killed backend) the last known facts
        # stand in, so the target's queries report as failed in that scrape instead of vanishing.
        facts = self.sessions[0].facts
        if facts is not None:
            self.last_facts = facts
        return facts or self.last_facts

    # -- reachability ------------------------------------------------------
    def connect(self, index: int, extension_refresh: float) -> bool:
        """Make session `index` usable; the first session's outcome is the target's reachability."""
        session = self.sessions[index]
        with self.session_locks[index]:
            try:
                session.ensure_connected()
                if index == 0 and time.monotonic() - self.extensions_checked > extension_refresh:
                    session.refresh_extensions()
                    self.extensions_checked = time.monotonic()
            except (ConnectFailed, QueryFailed) as exc:
                if index == 0:
                    self.mark_down(str(exc))
                return False
        if index == 0:
            self.mark_up()
        return True

    def mark_up(self) -> None:
        if self.up is False:
            log.info("target %s is reachable again", self.name)
        self.up, self.error = True, None

    def mark_down(self, message: str) -> None:
        if self.up is not False or self.error != message:
            log.warning("target %s is unreachable: %s", self.name, message)
        self.up, self.error = False, message

    def health(self, timeout: float) -> dict[str, Any]:
        """Reachability and round-trip time (a live SELECT 1 when the first session is free)."""
        lock = self.session_locks[0]
        if lock.acquire(timeout=timeout):
            try:
                self.rtt = self.sessions[0].ping()
                self.mark_up()
            except (ConnectFailed, QueryFailed) as exc:
                self.mark_down(str(exc))
            finally:
                lock.release()
            self.release_idle()
        return {"up": bool(self.up), "rtt_seconds": self.rtt if self.up else None, "error": self.error}

    def rows_labelled(self, query: QuerySpec) -> str:
        """The constant labels of a query's series on this target."""
        if query.scope == "cluster" or "datname" in query.labels:
            return self.row_label_text
        return self.label_text

    def release_idle(self) -> None:
        """After a run or a health check: close the sessions when discovery asks idle ones to be closed."""
        if self.close_when_idle:
            for lock, session in zip(self.session_locks, self.sessions):
                with lock:
                    session.close()

    def close(self) -> None:
        """Close every session; a running query is cancelled rather than waited for."""
        for lock, session in zip(self.session_locks, self.sessions):
            if not lock.acquire(timeout=0.2):
                session.cancel()
                if not lock.acquire(timeout=5):
                    session.close()
                    continue
            try:
                session.close()
            finally:
                lock.release()

    # -- recording runs ----------------------------------------------------
    def due(self, query: QuerySpec) -> bool:
        """Whether the query must run again (its last result is older than its ttl)."""
        return query.ttl <= 0 or time.monotonic() - self.statuses[query.name].finished_at >= query.ttl

    def record_rows(self, query: QuerySpec, run_id: int, fetched: Fetched) -> None:
        """Render a query's rows and record its status; a render problem fails this query alone."""
        status = self.statuses[query.name]
        layout = status.result.layout if status.result is not None else None
        result = fetched.result
        try:
            # Histogram rows were folded into a sink while they were fetched (render.RowSink).
            rows = self._top_changed(query, result.columns, masked_rows(query, result.columns, result.rows)) \
                if result.folded is None else result.folded
            run = render_rows(query, result.columns, rows, self.rows_labelled(query),
                              self.histograms[query.name], layout)
        except InvalidValue as exc:
            self.record_failure(query, run_id, "error", str(exc), fetched.start)
            return
        except Exception as exc:  # a bug must fail this query alone, counted, never the whole run
            log.exception("query %s on target %s: cannot render the result", query.name, self.name)
            self.record_failure(query, run_id, "error", f"cannot render the result: {exc!r}", fetched.start)
            return
        if result.prelude is not None:
            self.previous_run[query.name] = result.prelude
        for reason in ROW_PROBLEM_REASONS:
            status.errors[reason] += getattr(run.problems, reason)
        if run.problems.messages:
            self._log_problem(query, "; ".join(run.problems.messages))
        status.success, status.result, status.error = True, run, None
        status.rows, status.series = run.rows, run.series
        status.last_success = time.time()
        self._finish(status, fetched.start, run_id)

    def _top_changed(self, query: QuerySpec, columns: list[str],
                     rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
        """The rows of a `top_changed` query this run exports (topchanged.py); others as they came."""
        selector = self.top_changed.get(query.name)
        return rows if selector is None else selector.select(columns, rows)

    def record_failure(self, query: QuerySpec, run_id: int, reason: str, message: str, start: float) -> None:
        status = self.statuses[query.name]
        status.success, status.result, status.error = False, None, message
        status.errors[reason] += 1
        self._log_problem(query, message)
        self._finish(status, start, run_id)

    def record_reuse(self, query: QuerySpec, run_id: int) -> None:
        """The query's cached result serves run `run_id` (its ttl had not run out when the run began)."""
        status = self.statuses[query.name]
        status.reused_through = max(status.reused_through, run_id)

    @staticmethod
    def _finish(status: QueryStatus, start: float, run_id: int) -> None:
        status.duration = time.monotonic() - start
        status.finished_at = time.monotonic()
        status.run_id = run_id

    # -- capabilities ----------------------------------------------------------
    def probe_due(self, refresh: float) -> bool:
        return time.monotonic() - self.probed_at > refresh

    def mark_probed(self) -> None:
        self.probed_at = time.monotonic()

    def skip(self, query: QuerySpec, reason: str, message: str) -> None:
        """The role cannot run this query here: skipped (logged once), its old result and status dropped."""
        if self.skipped.get(query.name) != reason:
            log.info("query %s on target %s is skipped (%s): %s", query.name, self.name, reason, message)
        self.skipped[query.name] = reason
        self.statuses[query.name] = QueryStatus()

    def unskip(self, query: QuerySpec) -> None:
        if self.skipped.pop(query.name, None) is not None:
            log.info("query %s on target %s can run now", query.name, self.name)

    def _log_problem(self, query: QuerySpec, message: str) -> None:
        """Log a query's problem once, and again only when the message changes."""
        if self._logged.get(query.name) != message:
            self._logged[query.name] = message
            log.warning("query %s on target %s: %s", query.name, self.name, message)


def masked_rows(query: QuerySpec, columns: list[str], rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
    """The rows with the SQL text of the query's `sql_labels` masked (exporter/sqltext.py), before anything
    else (rendering, logging, top_changed) sees them."""
    if not query.sql_labels:
        return rows
    at = [columns.index(name) for name in query.sql_labels if name in columns]
    masked = []
    for row in rows:
        values = list(row)
        for i in at:
            if isinstance(values[i], str):
                values[i] = masked_sql(values[i])
        masked.append(tuple(values))
    return masked
