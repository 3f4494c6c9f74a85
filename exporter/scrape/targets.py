"""The targets a runner scrapes: the configured ones, and each discovery root's databases in its place.

`current` is in config order, each root's databases where the root stands, and is replaced, never
changed in place, so a scrape iterating it is safe. A root's database list is read in the
background, one reading at a time: a scrape, /health or /sd never connects to read it in its own
thread, and waits for a reading only as long as it chooses (`refresh(wait)`).
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Iterable

from exporter.config import Config
from exporter.scrape.discovery import Discovery, SessionFactory
from exporter.scrape.state import TargetState


class TargetSet:
    """Configured targets and discovered databases, by name, in config order."""

    def __init__(self, config: Config, session_factory: SessionFactory) -> None:
        self.config = config
        self.roots = {spec.name: Discovery(spec, config.defaults, config.queries, session_factory)
                      for spec in config.targets if spec.discovers}
        self.configured = {
            spec.name: TargetState(spec, config.queries,
                                   [session_factory(spec, config.defaults) for _ in range(spec.pool_size)])
            for spec in config.targets if not spec.discovers}
        self.current: dict[str, TargetState] = {}
        self._assemble()
        self._reading: concurrent.futures.Future[None] | None = None
        self._readers = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgvigil-discovery") \
            if self.roots else None
        self._lock = threading.Lock()
        self._closed = False

    def resolve(self, names: Iterable[str]) -> list[str]:
        """Target names to scrape: a discovery root's name stands for each of its databases."""
        found: list[str] = []
        for name in names:
            root = self.roots.get(name)
            found += [state.name for state in root.states.values()] if root is not None else [name]
        return found

    @property
    def due(self) -> bool:
        return any(root.due for root in self.roots.values())

    def refresh(self, wait: float) -> None:
        """Read each due root's database list in the background; wait for it at most `wait` seconds."""
        reading = self._start_reading()
        if reading is not None and wait > 0:
            concurrent.futures.wait([reading], timeout=wait)

    def gone(self, state: TargetState, wait: float) -> bool:
        """A discovered database could not be reached: read its server's list now (waiting at most `wait`
        seconds) and say whether the database went away (dropped, renamed, no longer allowed)."""
        root = self.roots.get(state.spec.parent or "")
        if root is None:
            return False
        root.request_refresh()
        deadline = time.monotonic() + wait
        for _ in range(2):  # a reading already under way may have begun before the database went
            reading = self._start_reading()
            if reading is None:
                break
            concurrent.futures.wait([reading], timeout=max(0.0, deadline - time.monotonic()))
            if state.removed or not reading.done() or not root.due:
                break
        return state.removed

    def _start_reading(self) -> concurrent.futures.Future[None] | None:
        with self._lock:
            if self._closed or self._readers is None:
                return None
            if self._reading is not None and not self._reading.done():
                return self._reading
            if not self.due:
                return None
            self._reading = self._readers.submit(self._read)
            return self._reading

    def _read(self) -> None:
        gone: list[TargetState] = []
        for root in self.roots.values():
            dropped = root.refresh()
            if dropped:
                self._expire_cluster_results(root)
            gone += dropped
        self._assemble()
        if self._closed:  # closed while reading: what the reading found is closed too
            gone += list(self.current.values())
        for state in gone:
            state.close()

    def _expire_cluster_results(self, root: Discovery) -> None:
        """A database went: the server's cluster-wide results (pg_database_size, kept 5 minutes) still
        hold its rows. They run again at the next scrape instead of showing a dropped database."""
        cluster_wide = [query.name for query in self.config.queries if query.scope == "cluster"]
        for state in root.states.values():
            if state.runs_cluster_queries:
                for name in cluster_wide:
                    state.statuses[name].finished_at = float("-inf")

    def _assemble(self) -> None:
        """`current` in config order, each root's databases in its place (a new dict: scrapes may be iterating)."""
        targets: dict[str, TargetState] = {}
        for spec in self.config.targets:
            root = self.roots.get(spec.name)
            if root is None:
                targets[spec.name] = self.configured[spec.name]
            else:
                targets.update((state.name, state) for state in root.states.values())
        self.current = targets

    def close(self) -> None:
        """No more readings; every session closed (running queries are cancelled)."""
        with self._lock:
            self._closed = True
        if self._readers is not None:
            self._readers.shutdown(wait=False)
        for state in self.current.values():
            state.close()
        for root in self.roots.values():
            root.close()
