"""Bounded counters: a label set past the cap folds into `other`, so a hostile log cannot grow a series set."""
from __future__ import annotations

import bisect
import threading
from typing import Callable

# Label sets one counter keeps at most; later new ones are counted under the fold value.
MAX_LABEL_SETS = 200
# pg_log_statement_duration_seconds' upper bounds: dense around the latency objective's 200 ms bound
# (alerts/objectives.yaml, query_latency), so the share of executions above it is read off exactly.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class BoundedCounter:
    """Counts by label tuple; at most `limit` tuples, then new ones under `fold(key)` (itself from a small set),
    or, without a fold, not at all (the label's values are a fixed set anyway)."""

    def __init__(self, fold: Callable[[tuple[str, ...]], tuple[str, ...]] | None = None,
                 limit: int = MAX_LABEL_SETS) -> None:
        self.values: dict[tuple[str, ...], float] = {}
        self.fold = fold
        self.limit = limit

    def add(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        if key in values:
            values[key] += amount
        elif len(values) < self.limit:
            values[key] = amount
        elif self.fold is not None:
            key = self.fold(key)
            values[key] = values.get(key, 0.0) + amount


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts):
            total += count
            out.append((bound, total))
        return out


class LogCounters:
    """Every counter of one target's log. The reader thread adds, a scrape copies, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # (severity, sqlstate): both already from bounded sets (classify.py), so no cap is needed
        self.messages = BoundedCounter(limit=4096)
        self.auth_failures = BoundedCounter(fold=_fold_login)  # (user, database, method[, network])
        self.simple: dict[str, float] = {}
        self.by_kind = {name: BoundedCounter(limit=16) for name in ("autovacuum_runs", "autovacuum_seconds",
                                                                    "cancellations")}
        self.durations = Histogram()
        # pgvigil's own: what the reading did
        self.read_bytes = 0
        self.entries = 0
        self.parse_errors = 0
        self.backlog_bytes = 0
        self.rotations = BoundedCounter(limit=8)
        self.source_errors = BoundedCounter(limit=16)
        self.readable: str | None = "not_read_yet"  # None: the latest read succeeded; else why it did not

    def bump(self, name: str, amount: float = 1.0) -> None:
        self.simple[name] = self.simple.get(name, 0.0) + amount


def _fold_login(key: tuple[str, ...]) -> tuple[str, ...]:
    """A failed login past the cap: its method is kept (a fixed set), user, database and network are not."""
    return ("other", "other", key[2], *(("other",) if len(key) > 3 else ()))
