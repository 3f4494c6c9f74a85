"""The order a server's discovered databases are visited in, and how many at once.

Each discovery root has its own queue of database runs, worked by as many threads as its
connection budget: a database waits its turn here, not on the budget (a run waiting for a slot
with a timeout would end as a failed connect, and a healthy database would read as down). Runs
of databases never visited go first, then the others in the order they fell due. The DSN's
database, which runs the cluster-wide queries, is not queued here: it runs on the runner's pool
and takes its slot before any queued database (budget.py).
"""
from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
from typing import Any, Callable

NEW, REFRESH = 0, 1  # priorities: a database never visited, one whose results fell due


class VisitQueue:
    """Runs of one server's databases, at most `width` at once, by priority then order of arrival."""

    def __init__(self, width: int, name: str) -> None:
        self.width = width
        self.name = name
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, priority: int, fn: Callable[..., None], *args: Any) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the visit queue is closed")
            self._queue.put((priority, next(self._order), (future, fn, args)))
            if len(self._workers) < self.width:  # threads start with the first visits, not with the runner
                worker = threading.Thread(target=self._work, name=f"pgvigil-visit-{self.name}", daemon=True)
                worker.start()
                self._workers.append(worker)
        return future

    def waiting(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """No new visits; queued ones end at once, unrun (a scrape waiting on one is woken), running ones
        finish on their own (the runner is closed: they stop at their next query)."""
        with self._lock:
            self._closed = True
        while True:
            try:
                _, _, item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and item[0].set_running_or_notify_cancel():
                item[0].set_result(None)
        for _ in self._workers:
            self._queue.put((-1, next(self._order), None))  # each worker stops

    def _work(self) -> None:
        while True:
            _, _, item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                fn(*args)
            except BaseException as exc:  # noqa: B036 (handed to whoever waits on the visit)
                future.set_exception(exc)
            else:
                future.set_result(None)
