"""A server's connection budget: at most `connection_budget` sessions connected to it at once.

Every session to a discovery root's server, discovery's own included, takes a slot to connect and
holds it until it closes. Two kinds of sessions wait for a slot: urgent ones (discovery reading the
database list, and the DSN's database, which runs the cluster-wide queries on every scrape) are
served before the databases' own runs, so however many databases queue for a slot, the server's
reachability and its cluster-wide metrics never wait behind them.

A session that waits in vain raises NoConnectionSlot: the target was not reached, it is not down
(its reachability stays as it was; runner and discovery leave it for a later run).
"""
from __future__ import annotations

import threading

from exporter.scrape.session import ConnectFailed, FetchResult, PreparedSql, ServerFacts, Session


class NoConnectionSlot(ConnectFailed):
    """No slot of the connection budget came free in time: nothing was tried against the server."""


class ConnectionBudget:
    """At most `limit` sessions connected to one server at once; urgent waiters go first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.peak = 0
        self._urgent_waiting = 0
        self._changed = threading.Condition()

    def acquire(self, wait: float, urgent: bool = False) -> bool:
        """Take a slot within `wait` seconds; False when none came free."""
        with self._changed:
            if urgent:
                self._urgent_waiting += 1
            try:
                if not self._changed.wait_for(
                        lambda: self.open < self.limit and (urgent or not self._urgent_waiting), timeout=wait):
                    return False
            finally:
                if urgent:
                    self._urgent_waiting -= 1
                    self._changed.notify_all()  # others may go now that no urgent session waits
            self.open += 1
            self.peak = max(self.peak, self.open)
            return True

    def release(self) -> None:
        with self._changed:
            self.open -= 1
            self._changed.notify_all()


class BudgetedSession:
    """A Session that takes a slot of its server's budget to connect and gives it back on close."""

    def __init__(self, inner: Session, budget: ConnectionBudget, wait: float, urgent: bool = False) -> None:
        self.inner = inner
        self.budget = budget
        self.wait = wait  # seconds a connect waits for a slot before it gives up (NoConnectionSlot)
        self.urgent = urgent
        self._holding = False
        self._lock = threading.Lock()

    @property
    def facts(self) -> ServerFacts | None:
        return self.inner.facts

    def ensure_connected(self) -> ServerFacts:
        with self._lock:
            if not self._holding:
                if not self.budget.acquire(self.wait, self.urgent):
                    raise NoConnectionSlot(f"no free connection within the connection budget ({self.budget.limit}) "
                                           f"after {self.wait:g}s")
                self._holding = True
        try:
            return self.inner.ensure_connected()
        except ConnectFailed:
            self._give_back()
            raise
        except BaseException:
            self.close()  # whatever it was, the slot is not held by a half-open session
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
