"""Per query on one target: the latest run's status and rendered text, and what the next run needs.

Recording a run's rows renders them here, so a query's status and its text change together. What a
run carries over to the next one lives here too: the prelude time (`{{previous_run}}`), cumulative
histograms, the rows `top_changed` compares against, and the ids a `pick` chose.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

from exporter.config import QuerySpec
from exporter.logs import loggable
from exporter.scrape.picks import Picked
from exporter.scrape.render import Histogram, InvalidValue, RenderedRun, render_rows
from exporter.scrape.retained import PROCESS, RETAINED_BYTES
from exporter.scrape.session import FetchResult
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
    # Scrapes that could not wait for this query's result: the scrape's deadline, which a client sets
    # (X-Prometheus-Scrape-Timeout-Seconds), not the query's own timeout, which fails it as "timeout".
    late: int = 0


@dataclass
class Fetched:
    """A query's rows, waiting to be rendered; `start` is when its run began (monotonic)."""

    result: FetchResult
    start: float


class QueryResults:
    """Each query's latest status and rendered result on one target, and what its next run needs.

    `target` is the target's name as it goes into log lines (logs.loggable)."""

    def __init__(self, queries: Sequence[QuerySpec], target: str) -> None:
        self.target = target
        self.statuses: dict[str, QueryStatus] = {q.name: QueryStatus() for q in queries}
        self.histograms: dict[str, dict[str, dict[tuple[Any, ...], Histogram]]] = {q.name: {} for q in queries}
        self.top_changed = {q.name: TopChangedRows(q) for q in queries if q.top_changed is not None}
        self.previous_run: dict[str, str] = {}
        self.picks: dict[tuple[str, int], Picked] = {}  # (a pick's SQL, max_series) -> the ids it chose
        self._logged: dict[str, str] = {}
        weakref.finalize(self, PROCESS.release, id(self))  # its texts leave the process-wide budget with it

    def due(self, query: QuerySpec) -> bool:
        """Whether the query must run again (its last result is older than its ttl)."""
        return query.ttl <= 0 or time.monotonic() - self.statuses[query.name].finished_at >= query.ttl

    def record_rows(self, query: QuerySpec, run_id: int, fetched: Fetched, labels: str) -> None:
        """Render a query's rows with the target's constant `labels` and record its status; a render
        problem fails this query alone."""
        status = self.statuses[query.name]
        layout = status.result.layout if status.result is not None else None
        result = fetched.result
        try:
            # Histogram rows were folded into a sink while they were fetched (render.RowSink).
            rows = self._top_changed(query, result.columns, masked_rows(query, result.columns, result.rows)) \
                if result.folded is None else result.folded
            allowance = PROCESS.allowance(id(self), query.name)
            bounded = query if allowance >= query.max_query_bytes else \
                dataclasses.replace(query, max_query_bytes=allowance)
            run = render_rows(bounded, result.columns, rows, labels, self.histograms[query.name], layout)
            if bounded is not query and run.problems.cardinality:
                run.problems.messages.append(f"pgvigil keeps at most {RETAINED_BYTES >> 20} MiB of exposition "
                                             "text for all queries and targets together (scrape/retained.py)")
            PROCESS.hold(id(self), query.name, sum(map(len, run.lines.values())))
        except InvalidValue as exc:
            self.record_failure(query, run_id, "error", str(exc), fetched.start)
            return
        except Exception as exc:  # a bug must fail this query alone, counted, never the whole run
            log.exception("query %s on target %s: cannot render the result", query.name, self.target)
            self.record_failure(query, run_id, "error", f"cannot render the result: {exc!r}", fetched.start)
            return
        if result.prelude is not None:
            self.previous_run[query.name] = result.prelude
        for reason in ROW_PROBLEM_REASONS:
            status.errors[reason] += getattr(run.problems, reason)
        # Rows the driver could not read (a value not UTF-8, e.g. a database name made in a SQL_ASCII
        # database, in pg_stat_database) were left out by the session (rows.py): counted, never silent.
        unreadable = getattr(result, "unreadable", 0)
        status.errors["invalid_value"] += unreadable
        messages = run.problems.messages + ([f"{unreadable} row(s) with a value the driver cannot read "
                                             "(text that is not UTF-8?) left out"] if unreadable else [])
        if messages:
            self._log_problem(query, "; ".join(messages))
        status.success, status.result, status.error = True, run, None
        status.rows, status.series = run.rows, run.series
        status.last_success = time.time()
        _finish(status, fetched.start, run_id)

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
        _finish(status, start, run_id)

    def record_reuse(self, query: QuerySpec, run_id: int) -> None:
        """The query's cached result serves run `run_id` (its ttl had not run out when the run began)."""
        status = self.statuses[query.name]
        status.reused_through = max(status.reused_through, run_id)

    def forget(self, query: QuerySpec) -> None:
        """Drop the query's status and result (it is skipped here from now on)."""
        self.statuses[query.name] = QueryStatus()

    def _log_problem(self, query: QuerySpec, message: str) -> None:
        """Log a query's problem once, and again only when the message changes."""
        if self._logged.get(query.name) != message:
            self._logged[query.name] = message
            log.warning("query %s on target %s: %s", query.name, self.target, loggable(message))


def _finish(status: QueryStatus, start: float, run_id: int) -> None:
    status.duration = time.monotonic() - start
    status.finished_at = time.monotonic()
    status.run_id = run_id


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
