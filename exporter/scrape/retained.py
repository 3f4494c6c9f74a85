"""The exposition text pgvigil keeps between scrapes, bounded for the whole process.

Each query's text is bounded by its `max_query_bytes` (16 MiB by default), but a config of many wide
queries multiplies it: twelve at the default limits kept 189 MB of text and reached 511 MB of memory.
Every query's latest text is held here under one budget, RETAINED_BYTES: a run renders at most what
the budget has left beside the other queries' texts (the rest of its series dropped and counted, as
past max_query_bytes), so the answer, and what is kept for it, never passes the budget.
"""
from __future__ import annotations

import threading

RETAINED_BYTES = 48 * 1024 * 1024


class RetainedText:
    """Bytes of exposition text held per (owner, query); `owner` is one target's results."""

    def __init__(self, limit: int = RETAINED_BYTES) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._held: dict[tuple[int, str], int] = {}
        self._total = 0

    def allowance(self, owner: int, query: str) -> int:
        """What the query may render now: the budget less every other query's held text."""
        with self._lock:
            return max(0, self.limit - (self._total - self._held.get((owner, query), 0)))

    def hold(self, owner: int, query: str, size: int) -> None:
        with self._lock:
            self._total += size - self._held.get((owner, query), 0)
            self._held[(owner, query)] = size

    def release(self, owner: int) -> None:
        """Everything an owner held (its target is gone: reload, removed database)."""
        with self._lock:
            for key in [key for key in self._held if key[0] == owner]:
                self._total -= self._held.pop(key)


PROCESS = RetainedText()
