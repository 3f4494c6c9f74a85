"""When queries run: single flight, concurrency across targets, the scrape's deadline.

A scrape asks every target for a run. Each target has at most one run in flight (single
flight): concurrent scrapes wait on the same run instead of hitting the database again.
Targets run concurrently; queries of one target run one after another on its session(s)
(execution.py). A scrape waits until its deadline at most; what it reports of each target,
and which targets it waits for at all, is freshness.py's: a configured target's queries not
finished by then are timeouts while its run goes on in the background, bounded by
statement_timeout; a discovered database reports what its latest visit left.

The pieces, each in its own module: the target list with discovery's databases (targets.py),
which queries run where (eligibility.py), one target's run (execution.py), the order and
width in which a server's databases are visited (visits.py), its connection budget (budget.py).

Sessions come from a factory (`open_session` by default: a TargetSession, or a ConsoleSession
for a `kind: pgbouncer` target), so all of this is tested with a fake session and no database
(tests/scrape/test_runner.py, tests/scrape/test_discovery.py).
"""
from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterable

from exporter.config import Config, Defaults, QuerySpec, TargetSpec
from exporter.scrape import freshness
from exporter.scrape.capability import CAPABILITY_REFRESH_SECONDS
from exporter.scrape.console import ConsoleSession
from exporter.scrape.discovery import Discovery, DiscoveryStatus
from exporter.scrape.eligibility import Eligibility
from exporter.scrape.execution import Execution
from exporter.scrape.outcome import Scrape
from exporter.scrape.sampler import Samplers
from exporter.scrape.session import Session, TargetSession
from exporter.scrape.state import TargetState
from exporter.scrape.targets import TargetSet
from exporter.scrape.visits import NEW, REFRESH, VisitQueue

SessionFactory = Callable[[TargetSpec, Defaults], Session]
# /health waits this long for the reachability checks it starts, then answers from state.
HEALTH_CHECK_WAIT = 0.5
_run_ids = itertools.count(1)


def open_session(spec: TargetSpec, defaults: Defaults) -> Session:
    """The session class of the target's kind: PostgreSQL, or PgBouncer's admin console."""
    return ConsoleSession(spec, defaults) if spec.kind == "pgbouncer" else TargetSession(spec, defaults)


class Runner:
    """Runs the configured queries against the configured targets for scrapes."""

    def __init__(self, config: Config, session_factory: SessionFactory = open_session, sampling: bool = False) -> None:
        self.config = config
        self._targets = TargetSet(config, session_factory)
        # One sampler per server (sampler.py), started by whoever serves scrapes (server.Exporter).
        self.samplers = Samplers.of(self._targets if sampling else None, session_factory)
        self.eligibility = Eligibility(config.queries)
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[concurrent.futures.Future[None], int]] = {}
        self._checks: dict[str, concurrent.futures.Future[None]] = {}
        self._closed = False
        self._tail = 0.0  # seconds the latest scrape took after it stopped waiting (its outcomes)
        # Configured targets and each server's DSN database run here; the other discovered databases
        # wait their turn in their server's visit queue, as many at once as its budget leaves them.
        width = len(self._targets.configured) + len(self.roots)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(128, max(4, width * 2)), thread_name_prefix="pgvigil-target")
        self._visits = {name: VisitQueue(max(1, root.spec.connection_budget - 1 - root.sampled), name)
                        for name, root in self.roots.items()}
        rendering = len(self._targets.configured) + sum(root.spec.connection_budget for root in self.roots.values())
        self._render_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(8, max(2, rendering)), thread_name_prefix="pgvigil-render")
        self._execution = Execution(config.defaults, self.eligible_queries, self._gone, lambda: self._closed,
                                    self._render_pool)

    @property
    def targets(self) -> dict[str, TargetState]:
        """Every target by name, in config order (replaced, never changed in place)."""
        return self._targets.current

    @property
    def roots(self) -> dict[str, Discovery]:
        return self._targets.roots

    # -- scraping ----------------------------------------------------------
    def scrape(self, timeout: float | None = None, only: Iterable[str] | None = None,
               reserve: float = 0.0) -> Scrape:
        """Start (or join) a run on each target and wait for those that need it, until the scrape's deadline.

        The wait ends early by what comes after it: this scrape's own outcomes (as long as the latest
        scrape's took) and `reserve`, the caller's time to answer (its text, with thousands of databases
        tens of megabytes), together at most half the budget: the answer is ready by the deadline."""
        start = time.monotonic()
        budget = self.config.defaults.scrape_timeout if timeout is None else timeout
        deadline = start + budget - min(budget / 2, self._tail + max(0.0, reserve))
        # A root never read is waited for (it has no databases yet); a due re-reading only briefly.
        first = any(root.status.success is None for root in self.roots.values())
        self._targets.refresh(wait=budget if first else budget / 4)
        names = self._targets.resolve(only) if only is not None else list(self.targets)
        states = [self.targets[name] for name in names if name in self.targets]
        runs = {state.name: self._start_run(state) for state in states}
        awaited = [runs[state.name][0] for state in states if freshness.awaited(state, self.eligible_queries(state))]
        concurrent.futures.wait(awaited, timeout=max(0.0, deadline - time.monotonic()))
        waited = time.monotonic()
        shown = {state.name: freshness.reported(state) for state in states}  # one look: visits go on meanwhile
        reported = [state for state in states if shown[state.name]]
        outcomes = []
        now = time.monotonic()
        for state in reported:
            future, run_id = runs[state.name]
            for query in self.eligible_queries(state):
                outcome = freshness.outcome(state, query, run_id, future.done(), now)
                if outcome is not None:
                    outcomes.append(outcome)
        asked = {state.spec.parent for state in states} | set(only or self.roots)
        discovery = [root for name, root in self.roots.items() if name in asked]
        waiting = {root.spec.name: sum(not shown.get(state.name, state.up is not None)
                                       for state in root.states.values() if state.discovered_database)
                   for root in discovery}
        self._tail = time.monotonic() - waited
        sampled = self.samplers.shown(state.spec.configured_name for state in reported if state.runs_cluster_queries)
        return Scrape(outcomes=outcomes, targets=reported, duration=time.monotonic() - start, discovery=discovery,
                      not_yet_scraped=waiting, samplers=sampled)

    def _start_run(self, state: TargetState) -> tuple[concurrent.futures.Future[None], int]:
        with self._lock:
            inflight = self._inflight.get(state.name)
            if self._closed:
                # A scrape that took this runner just before a reload closed it: nothing new runs,
                # the scrape reports what it has instead of failing.
                return inflight or (_finished(), 0)
            if inflight is None or inflight[0].done():
                run_id = next(_run_ids)
                if freshness.settled(state, self.eligible_queries(state), state.probe_due(CAPABILITY_REFRESH_SECONDS)):
                    # Nothing to run: done here, not handed to a thread (hundreds of databases a scrape).
                    self._execution.reuse_all(state, run_id)
                    inflight = (_finished(), run_id)
                else:
                    inflight = (self._submit(state, run_id), run_id)
                self._inflight[state.name] = inflight
            return inflight

    def _submit(self, state: TargetState, run_id: int) -> concurrent.futures.Future[None]:
        visits = self._visits.get(state.spec.parent or "") if state.discovered_database else None
        if visits is None:
            return self._pool.submit(self._execution.run, state, run_id)
        return visits.submit(NEW if state.up is None else REFRESH, self._execution.run, state, run_id)

    def eligible_queries(self, state: TargetState, with_skipped: bool = False) -> list[QuerySpec]:
        """Queries that run on this target (eligibility.py); `with_skipped`: also those the role may not run."""
        return self.eligibility.queries_for(state, self.targets, with_skipped)

    # -- discovery -----------------------------------------------------------
    def resolve(self, names: Iterable[str]) -> list[str]:
        """Target names to scrape: a discovery root's name stands for each of its databases."""
        return self._targets.resolve(names)

    def known(self, name: str) -> bool:
        """Whether /probe may ask for `name`: a configured target, a root, or a discovered database."""
        if name not in self.targets and name not in self.roots and self._targets.due:
            self.refresh_discovery()  # a database created since the list was read
        return name in self.targets or name in self.roots

    def refresh_discovery(self, wait: float | None = None) -> None:
        """Read again each root's database list that is due (in the background), waiting for it at most
        `wait` seconds (default: scrape_timeout); databases that went away are closed."""
        self._targets.refresh(self.config.defaults.scrape_timeout if wait is None else wait)

    def discovery_status(self) -> list[DiscoveryStatus]:
        return [replace(root.status, not_yet_scraped=root.unvisited()) for root in self.roots.values()]

    def _gone(self, state: TargetState) -> bool:
        return self._targets.gone(state, self.config.defaults.scrape_timeout)

    # -- health and lifecycle -----------------------------------------------
    def health(self, wait: float = HEALTH_CHECK_WAIT) -> dict[str, dict[str, Any]]:
        """Each target's reachability as pgvigil knows it, at once, never connecting in the caller's thread.

        Configured targets and each server's DSN database get a check (SELECT 1) started in the background,
        one at a time per target, waited for at most `wait` seconds; a discovered database is as its
        latest visit left it (`up` None: not yet scraped)."""
        deadline = time.monotonic() + wait
        self._targets.refresh(wait)  # a list not read yet, or due: read in the background, waited for within `wait`
        checks = [self._start_check(state) for state in self.targets.values() if not state.discovered_database]
        concurrent.futures.wait([check for check in checks if check is not None],
                                timeout=max(0.0, deadline - time.monotonic()))
        return {name: state.connections.report() for name, state in self.targets.items()}

    def _start_check(self, state: TargetState) -> concurrent.futures.Future[None] | None:
        with self._lock:
            if self._closed:
                return None
            check = self._checks.get(state.name)
            if check is None or check.done():
                check = self._checks[state.name] = self._pool.submit(state.connections.check, HEALTH_CHECK_WAIT)
            return check

    def close(self) -> None:
        """Stop: no new runs, no reconnects; running queries are cancelled on the server."""
        with self._lock:  # a scrape's _start_run submits either before this or not at all
            self._closed = True
        self.samplers.close()
        # Queued runs are not cancelled: a cancelled future never wakes a scrape waiting on it.
        # They start, find the runner closed and end at once (a visit queue ends its queued ones).
        self._pool.shutdown(wait=False)
        for visits in self._visits.values():
            visits.close()
        self._render_pool.shutdown(wait=False, cancel_futures=True)
        self._targets.close()


def _finished() -> concurrent.futures.Future[None]:
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    future.set_result(None)
    return future
