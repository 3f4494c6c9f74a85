"""One run of one target: connect, probe what the role may read, run the due queries, record them.

A run connects the target's first session (its reachability), probes the eligible queries every
CAPABILITY_REFRESH_SECONDS, reuses each result still within its ttl, and runs the others one after
another on its sessions (spread over them with pool_size > 1). A lost connection is re-established
once and the query retried. Each result is rendered on the render pool while the next query runs
on the server. A discovered database that cannot be reached is first looked for in its server's
database list (`gone`): a dropped database is removed, not reported down.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Callable

from exporter.config import Defaults, QuerySpec
from exporter.logs import loggable
from exporter.scrape.budget import NoConnectionSlot
from exporter.scrape.capability import CAPABILITY_REFRESH_SECONDS, probe
from exporter.scrape.picks import picked_ids
from exporter.scrape.session import FetchResult, QueryFailed, prepare_sql
from exporter.scrape.state import Fetched, TargetState

log = logging.getLogger(__name__)

EXTENSION_REFRESH_SECONDS = 60.0


class SessionLost(Exception):
    """A session's connection is gone and cannot be re-established: its remaining queries wait for the next run."""


class Execution:
    """Runs targets' queries: `eligible(state, with_skipped)` says which, `gone(state)` whether an
    unreachable discovered database was dropped, `closed()` whether the runner is shutting down."""

    def __init__(self, defaults: Defaults, eligible: Callable[[TargetState, bool], list[QuerySpec]],
                 gone: Callable[[TargetState], bool], closed: Callable[[], bool],
                 render_pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self.defaults = defaults
        self.eligible = eligible
        self.gone = gone
        self.closed = closed
        self.render_pool = render_pool

    def run(self, state: TargetState, run_id: int) -> None:
        try:
            self._run_connected(state, run_id)
        finally:
            state.release_idle()

    def reuse_all(self, state: TargetState, run_id: int) -> None:
        """Every result of the target serves run `run_id` from cache: nothing to connect for."""
        for query in self.eligible(state, False):
            state.record_reuse(query, run_id)

    def _run_connected(self, state: TargetState, run_id: int) -> None:
        if not self.connect(state, 0):
            return
        if state.probe_due(CAPABILITY_REFRESH_SECONDS):
            probe(state, self.eligible(state, True), self.defaults.timeout, self.defaults.lock_timeout)
        eligible = self.eligible(state, False)
        due = [q for q in eligible if state.due(q)]
        for query in eligible:
            if query not in due:
                # Decided at the start of the run: the cached result serves this run's scrapes even
                # if its ttl runs out before the run ends (else the series would blink out).
                state.record_reuse(query, run_id)
        pool = len(state.sessions)
        if pool == 1:
            self._run_queries(state, 0, due, run_id)
            return
        threads = []
        for index in range(pool):
            if index and not self.connect(state, index):
                continue
            thread = threading.Thread(target=self._run_queries, args=(state, index, due[index::pool], run_id),
                                      daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()

    def connect(self, state: TargetState, index: int) -> bool:
        """Make session `index` usable; the first session's failure makes the target down, unless it
        found no slot of its server's budget (nothing was tried) or the database was dropped."""
        if self.closed():  # a run still going after close() (reload, shutdown) must not reconnect
            return False
        failure = state.connections.connect(index, EXTENSION_REFRESH_SECONDS)
        if failure is None:
            return True
        if index == 0 and not isinstance(failure, NoConnectionSlot) and not self.gone(state):
            state.connections.mark_down(str(failure))
        return False

    def _run_queries(self, state: TargetState, index: int, queries: list[QuerySpec], run_id: int) -> None:
        # Each result is rendered on the render pool while the next query runs on the server:
        # the driver releases the GIL while it waits for the server, so the two overlap.
        rendering: concurrent.futures.Future[None] | None = None
        try:
            for query in queries:
                if self.closed():  # reload or shutdown: the rest of this run is abandoned, not started
                    break
                fetched = self._fetch(state, index, query, run_id)
                if fetched is None:
                    continue
                _wait_rendered(rendering)
                rendering = self._submit_render(state, query, run_id, fetched)
        except SessionLost:
            pass
        finally:
            _wait_rendered(rendering)

    def _submit_render(self, state: TargetState, query: QuerySpec, run_id: int,
                       fetched: Fetched) -> concurrent.futures.Future[None] | None:
        try:
            return self.render_pool.submit(state.record_rows, query, run_id, fetched)
        except RuntimeError:  # closed (reload, shutdown) while this run goes on: render here
            state.record_rows(query, run_id, fetched)
            return None

    def _fetch(self, state: TargetState, index: int, query: QuerySpec, run_id: int) -> Fetched | None:
        """A query's rows, or None after a recorded failure; raises SessionLost when the session cannot reconnect."""
        start = time.monotonic()
        try:
            try:
                result = _query(state, index, query)
            except QueryFailed as exc:
                if not exc.connection_lost:
                    raise
                # The connection was lost (server restart, terminated backend): reconnect once and retry.
                if not self.connect(state, index):
                    raise SessionLost() from None
                result = _query(state, index, query)
        except QueryFailed as exc:
            state.record_failure(query, run_id, exc.reason, str(exc), start)
            return None
        except SessionLost:
            raise
        except Exception as exc:  # a bug, or an answer no check foresaw: this query fails alone, counted
            log.exception("query %s on target %s: unexpected failure", query.name, loggable(state.name))
            state.record_failure(query, run_id, "error", f"unexpected failure: {type(exc).__name__}", start)
            return None
        return Fetched(result, start)


def _query(state: TargetState, index: int, query: QuerySpec) -> FetchResult:
    with state.session_locks[index]:
        session = state.sessions[index]
        picked = picked_ids(state.picks, session, query)
        prepared = prepare_sql(query, state.previous_run.get(query.name), state.histograms[query.name], picked)
        return session.run(prepared, timeout=query.timeout, lock_timeout=query.lock_timeout)


def _wait_rendered(rendering: concurrent.futures.Future[None] | None) -> None:
    if rendering is not None:
        try:
            rendering.result()
        except concurrent.futures.CancelledError:  # close() dropped it: the runner is going away
            pass
