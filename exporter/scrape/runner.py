"""When queries run: ttl cache, single flight, concurrency across targets, scrape deadline.

A scrape asks every target for a run. Each target has at most one run in
flight (single flight): concurrent scrapes wait on the same run instead of
hitting the database again. Targets run concurrently; queries of one target
run one after another on its session(s). A scrape waits until its deadline;
queries not finished by then are reported as timeouts while the run goes on
in the background, bounded by statement_timeout.

Sessions come from a factory (`open_session` by default: a TargetSession, or a
ConsoleSession for a `kind: pgbouncer` target), so all of this is tested with a
fake session and no database (tests/scrape/test_runner.py).

A target with `databases:` is a discovery root (discovery.py): its databases join
`targets` as `<target>/<datname>` when a scrape finds the list due for a refresh.
A scrape does not wait for a discovered database whose results are all at most one
ttl past their ttl: it serves them while the run refreshes them (`_serves_stale`).
`targets` is replaced, never changed in place, so a scrape iterating it is safe.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from typing import Any, Callable, Iterable

from exporter.config import Config, Defaults, QuerySpec, TargetSpec
from exporter.scrape.capability import CAPABILITY_REFRESH_SECONDS, probe
from exporter.scrape.console import ConsoleSession
from exporter.scrape.discovery import Discovery, DiscoveryStatus
from exporter.scrape.outcome import QueryOutcome, Scrape
from exporter.scrape.picks import picked_ids
from exporter.scrape.session import FetchResult, QueryFailed, ServerFacts, Session, TargetSession, prepare_sql
from exporter.scrape.state import EligibleMemo, Fetched, TargetState

EXTENSION_REFRESH_SECONDS = 60.0

SessionFactory = Callable[[TargetSpec, Defaults], Session]
_run_ids = itertools.count(1)


def open_session(spec: TargetSpec, defaults: Defaults) -> Session:
    """The session class of the target's kind: PostgreSQL, or PgBouncer's admin console."""
    return ConsoleSession(spec, defaults) if spec.kind == "pgbouncer" else TargetSession(spec, defaults)


class SessionLost(Exception):
    """A session's connection is gone and cannot be re-established: its remaining queries wait for the next run."""


class Runner:
    """Runs the configured queries against the configured targets for scrapes."""

    def __init__(self, config: Config, session_factory: SessionFactory = open_session) -> None:
        self.config = config
        self.roots = {spec.name: Discovery(spec, config.defaults, config.queries, session_factory)
                      for spec in config.targets if spec.discovers}
        self._configured = {
            spec.name: TargetState(spec, config.queries,
                                   [session_factory(spec, config.defaults) for _ in range(spec.pool_size)])
            for spec in config.targets if not spec.discovers}
        self.targets: dict[str, TargetState] = {}
        self._assemble()
        self._lock = threading.Lock()
        self._discovery_lock = threading.Lock()
        self._inflight: dict[str, tuple[concurrent.futures.Future[None], int]] = {}
        # A root's databases run at most `connection_budget` at once: more workers would only wait for a slot.
        width = len(self._configured) + sum(root.spec.connection_budget for root in self.roots.values())
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(128, max(4, width * 2)), thread_name_prefix="pgvigil-target")
        self._render_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(8, max(2, width)), thread_name_prefix="pgvigil-render")
        self._closed = False

    # -- scraping ----------------------------------------------------------
    def scrape(self, timeout: float | None = None, only: Iterable[str] | None = None) -> Scrape:
        """Start (or join) a run on each target and wait for them until the scrape's deadline."""
        start = time.monotonic()
        budget = self.config.defaults.scrape_timeout if timeout is None else timeout
        self.refresh_discovery()
        names = self.resolve(only) if only is not None else list(self.targets)
        states = [self.targets[name] for name in names if name in self.targets]
        stale_ok = {state.name for state in states if self._serves_stale(state)}
        runs = {state.name: self._start_run(state) for state in states}
        awaited = [future for name, (future, _) in runs.items() if name not in stale_ok]
        concurrent.futures.wait(awaited, timeout=max(0.0, budget - (time.monotonic() - start)))
        # A database dropped since the list was read is gone, not down (its failed connect re-read the list).
        present = [state for state in states if not state.removed]
        moved = len(present) < len(states)
        outcomes = []
        now = time.monotonic()
        for state in present:
            future, run_id = runs[state.name]
            for query in self.eligible_queries(state):
                if moved and query.scope == "cluster" and state.statuses[query.name].success is None:
                    continue  # it became this database's when the dropped one went, after this run began
                outcomes.append(self._outcome(state, query, run_id, future.done(), now, state.name in stale_ok))
        states = present
        roots = {state.spec.parent for state in states} | set(only or self.roots)
        discovery = [root for name, root in self.roots.items() if name in roots]
        return Scrape(outcomes=outcomes, targets=states, duration=time.monotonic() - start, discovery=discovery)

    # -- discovery -----------------------------------------------------------
    def resolve(self, names: Iterable[str]) -> list[str]:
        """Target names to scrape: a discovery root's name stands for each of its databases."""
        found: list[str] = []
        for name in names:
            root = self.roots.get(name)
            found += [state.name for state in root.states.values()] if root is not None else [name]
        return found

    def known(self, name: str) -> bool:
        """Whether /probe may ask for `name`: a configured target, a root, or a discovered database."""
        self.refresh_discovery()
        return name in self.targets or name in self.roots

    def refresh_discovery(self) -> None:
        """Read again each root's database list that is due; databases that went away are closed."""
        if self._closed or not any(root.due for root in self.roots.values()):
            return
        with self._discovery_lock:
            gone = [state for root in self.roots.values() for state in root.refresh()]
            self._assemble()
        for state in gone:
            state.close()

    def discovery_status(self) -> list[DiscoveryStatus]:
        return [root.status for root in self.roots.values()]

    def _assemble(self) -> None:
        """`targets` in config order, each root's databases in its place (a new dict: scrapes may be iterating)."""
        targets: dict[str, TargetState] = {}
        for spec in self.config.targets:
            root = self.roots.get(spec.name)
            if root is None:
                targets[spec.name] = self._configured[spec.name]
            else:
                targets.update((state.name, state) for state in root.states.values())
        self.targets = targets

    def _start_run(self, state: TargetState) -> tuple[concurrent.futures.Future[None], int]:
        with self._lock:
            inflight = self._inflight.get(state.name)
            if self._closed:
                # A scrape that took this runner just before a reload closed it: nothing new runs,
                # the scrape reports what it has instead of failing.
                return inflight or (_finished(), 0)
            if inflight is None or inflight[0].done():
                run_id = next(_run_ids)
                if self._all_fresh(state):
                    # Nothing to run: done here, not handed to a pool thread (hundreds of databases a scrape).
                    self._reuse_all(state, run_id)
                    inflight = (_finished(), run_id)
                else:
                    inflight = (self._pool.submit(self._run_target, state, run_id), run_id)
                self._inflight[state.name] = inflight
            return inflight

    def _serves_stale(self, state: TargetState) -> bool:
        """A discovered database whose every result is at most one ttl past its ttl: its scrape serves
        them while its run refreshes them in the background, so a scrape of many databases waits for
        none of their per-database queries. A new database, or older results, are waited for."""
        if state.spec.parent is None or not state.up:
            return False
        now = time.monotonic()
        return all(query.ttl > 0 and state.statuses[query.name].success
                   and now - state.statuses[query.name].finished_at < 2 * query.ttl
                   for query in self.eligible_queries(state))

    @staticmethod
    def _outcome(state: TargetState, query: QuerySpec, run_id: int, run_done: bool, now: float,
                 stale_ok: bool = False) -> QueryOutcome:
        status = state.statuses[query.name]
        # Run ids grow, and a target's runs follow one another: a result from this run or a later
        # one, or one a later run still reused, is current for this scrape. (Under load a newer run
        # may already have started by the time a waiting scrape looks.)
        fresh = (status.run_id >= run_id or status.reused_through >= run_id
                 or (query.ttl > 0 and now - status.finished_at < query.ttl))
        if fresh or (stale_ok and not run_done and status.success):
            return QueryOutcome(state, query, status, included=bool(status.success), timed_out=False)
        if not run_done:
            status.errors["timeout"] += 1
            return QueryOutcome(state, query, status, included=False, timed_out=True)
        return QueryOutcome(state, query, status, included=False, timed_out=False)

    def eligible_queries(self, state: TargetState, with_skipped: bool = False) -> list[QuerySpec]:
        """Queries that run on this target given its server's version, extensions and scope, and
        the role's privileges (unless `with_skipped`: the ones capability.probe checks)."""
        facts = state.facts
        if facts is None:
            return []
        # Asked several times per database and scrape (hundreds of databases, each over every query):
        # remembered until the facts, the target list (which database speaks for a server) or the skips change.
        skips, memo = tuple(state.skipped), state.eligible_memo
        if (memo is not None and memo.facts is facts and memo.targets is self.targets and memo.skips == skips
                and memo.with_skipped == with_skipped):
            return memo.queries
        eligible = [q for q in self.config.queries if self._applies(q, state, facts) and self._owns(q, state, facts)
                    and (with_skipped or q.name not in state.skipped)]
        state.eligible_memo = EligibleMemo(facts, self.targets, skips, with_skipped, eligible)
        return eligible

    @staticmethod
    def _applies(query: QuerySpec, state: TargetState, facts: ServerFacts) -> bool:
        if query.kind != state.spec.kind:  # postgres packs never run on a PgBouncer console, nor the reverse
            return False
        if query.targets is not None and state.spec.configured_name not in query.targets:
            return False
        if query.requires_extension and query.requires_extension not in facts.extensions:
            return False
        return query.runs_on_version(facts.version)

    def _owns(self, query: QuerySpec, state: TargetState, facts: ServerFacts) -> bool:
        """Cluster-wide queries run on the first eligible target of each server only."""
        if query.scope != "cluster":
            return True
        if not self._speaks_for_root(state):
            return False
        for other in self.targets.values():
            if not self._speaks_for_root(other):
                continue
            other_facts = other.facts
            if other_facts is None or other_facts.identity != facts.identity:
                continue
            if self._applies(query, other, other_facts):
                return other is state
        return True

    def _speaks_for_root(self, state: TargetState) -> bool:
        """Of a root's databases (one server, known before any connects), only the first runs cluster-wide queries."""
        root = self.roots.get(state.spec.parent or "")
        return root is None or next(iter(root.states.values()), None) is state

    # -- running -------------------------------------------------------------
    def _run_target(self, state: TargetState, run_id: int) -> None:
        try:
            self._run_connected(state, run_id)
        finally:
            state.release_idle()

    def _run_connected(self, state: TargetState, run_id: int) -> None:
        if not self._connect(state, 0):
            return
        if state.probe_due(CAPABILITY_REFRESH_SECONDS):
            defaults = self.config.defaults
            probe(state, self.eligible_queries(state, with_skipped=True), defaults.timeout, defaults.lock_timeout)
        eligible = self.eligible_queries(state)
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
            if index and not self._connect(state, index):
                continue
            thread = threading.Thread(target=self._run_queries, args=(state, index, due[index::pool], run_id),
                                      daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()

    def _reuse_all(self, state: TargetState, run_id: int) -> None:
        """A discovered database whose results all serve from cache is not connected to: with more
        databases than the connection budget, each connect is a new backend. Its reachability is
        that of its last run; the server's is checked on every scrape by its first database."""
        for query in self.eligible_queries(state):
            state.record_reuse(query, run_id)

    def _all_fresh(self, state: TargetState) -> bool:
        return (state.spec.parent is not None and bool(state.up) and not state.probe_due(CAPABILITY_REFRESH_SECONDS)
                and not any(state.due(query) for query in self.eligible_queries(state)))

    def _connect(self, state: TargetState, index: int) -> bool:
        # A run still going after close() (reload, shutdown) must not reconnect.
        if self._closed:
            return False
        if state.connect(index, EXTENSION_REFRESH_SECONDS):
            return True
        root = self.roots.get(state.spec.parent or "")
        if root is not None:  # the database may have been dropped: read the list now, not in a minute
            root.request_refresh()
            self.refresh_discovery()
        return False

    def _run_queries(self, state: TargetState, index: int, queries: list[QuerySpec], run_id: int) -> None:
        # Each result is rendered on the render pool while the next query runs on the server:
        # psycopg2 releases the GIL while it waits for the server, so the two overlap.
        rendering: concurrent.futures.Future[None] | None = None
        try:
            for query in queries:
                if self._closed:  # reload or shutdown: the rest of this run is abandoned, not started
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
            return self._render_pool.submit(state.record_rows, query, run_id, fetched)
        except RuntimeError:  # closed (reload, shutdown) while this run goes on: render here
            state.record_rows(query, run_id, fetched)
            return None

    def _fetch(self, state: TargetState, index: int, query: QuerySpec, run_id: int) -> Fetched | None:
        """A query's rows, or None after a recorded failure; raises SessionLost when the session cannot reconnect."""
        start = time.monotonic()
        try:
            try:
                result = self._query(state, index, query)
            except QueryFailed as exc:
                if not exc.connection_lost:
                    raise
                # The connection was lost (server restart, terminated backend): reconnect once and retry.
                if not self._connect(state, index):
                    raise SessionLost() from None
                result = self._query(state, index, query)
        except QueryFailed as exc:
            state.record_failure(query, run_id, exc.reason, str(exc), start)
            return None
        return Fetched(result, start)

    @staticmethod
    def _query(state: TargetState, index: int, query: QuerySpec) -> FetchResult:
        with state.session_locks[index]:
            session = state.sessions[index]
            picked = picked_ids(state.picks, session, query)
            prepared = prepare_sql(query, state.previous_run.get(query.name), state.histograms[query.name], picked)
            return session.run(prepared, timeout=query.timeout, lock_timeout=query.lock_timeout)

    # -- health and lifecycle -----------------------------------------------
    def health(self, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
        """Reachability and round-trip time of each target (a live SELECT 1 when the session is free)."""
        self.refresh_discovery()
        return {name: state.health(timeout) for name, state in self.targets.items()}

    def close(self) -> None:
        """Stop: no new runs, no reconnects; running queries are cancelled on the server."""
        with self._lock:  # a scrape's _start_run submits either before this or not at all
            self._closed = True
        # Queued runs are not cancelled: a cancelled future never wakes a scrape waiting on it.
        # They start, find the runner closed and end at once.
        self._pool.shutdown(wait=False)
        self._render_pool.shutdown(wait=False, cancel_futures=True)
        for state in self.targets.values():
            state.close()
        for root in self.roots.values():
            root.close()


def _finished() -> concurrent.futures.Future[None]:
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    future.set_result(None)
    return future


def _wait_rendered(rendering: concurrent.futures.Future[None] | None) -> None:
    if rendering is not None:
        try:
            rendering.result()
        except concurrent.futures.CancelledError:  # close() dropped it: the runner is going away
            pass
