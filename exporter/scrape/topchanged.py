"""`top_changed`: bounded cardinality with honest sums (pg_stat_statements).

Ranking statements by all-time totals never lets a new hot statement in. Instead, each run
exports the `limit` rows whose counter `by` grew most since the previous run, and folds every
other row's growth into remainder rows whose last label is `other` (one per combination of
the other labels, e.g. per user and database). The remainder is pgvigil's own accumulator,
so it only ever grows, and it also takes the growth of a row in the run it enters the top
(Prometheus' rate() has no previous sample for that new series). sum(rate(...)) over a
metric therefore equals the server's total rate, whichever rows are exported.

A remainder lives as long as its group has rows: once none has been seen for REMAINDER_IDLE_SECONDS
(a role of dynamic credentials, gone; a dropped database), its series ends, as it can no longer grow.
At most `max_series` remainders are kept (those seen longest ago go first).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from exporter.config import MetricType, QuerySpec

OTHER = "other"
REMAINDER_IDLE_SECONDS = 3600.0


class TopChangedRows:
    """Previous counter values per row key, and the remainder accumulators of one (target, query)."""

    def __init__(self, query: QuerySpec, clock: Callable[[], float] = time.monotonic) -> None:
        assert query.top_changed is not None
        self.query = query
        self.clock = clock
        self.seen: dict[tuple, float] = {}  # group -> when a row of it was last seen
        self.spec = query.top_changed
        self.counters = [m.column for m in query.metrics if m.type is MetricType.COUNTER]
        self.previous: dict[tuple, list[float]] = {}
        self.exported: set[tuple] = set()
        self.other: dict[tuple, list[float]] = {}  # group (every label but the last) -> accumulated counters
        # A row of each group: a remainder row takes its other columns (neither label nor counter) from it.
        self.templates: dict[tuple, Sequence[Any]] = {}

    def select(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[tuple]:
        """This run's rows: the top `limit` by growth of `by`, then one remainder row per group."""
        label_at = [columns.index(label) for label in self.query.labels]
        counter_at = [columns.index(column) for column in self.counters]
        by = self.counters.index(self.spec.by)
        current: dict[tuple, tuple[Sequence[Any], list[float], list[float]]] = {}
        now = self.clock()
        for row in rows:
            key = tuple(row[i] for i in label_at)
            values = [_number(row[i]) for i in counter_at]
            current[key] = (row, values, self._growth(key, values))
            self.templates[key[:-1]] = row
            self.seen[key[:-1]] = now
        ranked = sorted(current, key=lambda k: (current[k][2][by], current[k][1][by]), reverse=True)
        chosen = ranked[:self.spec.limit]
        for key in ranked[self.spec.limit:] + [k for k in chosen if k not in self.exported]:
            self._add_to_other(key[:-1], current[key][2])
        self.previous = {key: values for key, (_, values, _) in current.items()}
        self.exported = set(chosen)
        self._expire(now)
        gauge_at = [columns.index(m.column) for m in self.query.metrics if m.column not in self.counters]
        return [tuple(current[key][0]) for key in chosen] + self._remainder_rows(label_at, counter_at, gauge_at)

    def _growth(self, key: tuple, values: list[float]) -> list[float]:
        before = self.previous.get(key)
        if before is None:
            return list(values)  # new since the previous run (or the first run): all of it is new
        # A counter below its previous value was reset (pg_stat_statements_reset): it grew by its value.
        return [now - then if now >= then else now for now, then in zip(values, before)]

    def _add_to_other(self, group: tuple, growth: list[float]) -> None:
        totals = self.other.setdefault(group, [0.0] * len(growth))
        for i, amount in enumerate(growth):
            totals[i] += amount

    def _expire(self, now: float) -> None:
        """Forget the groups no row has been seen of for REMAINDER_IDLE_SECONDS, and the oldest past max_series."""
        by_age = sorted(self.seen, key=self.seen.__getitem__)
        excess = max(0, len(by_age) - self.query.max_series)
        for i, group in enumerate(by_age):
            if i < excess or now - self.seen[group] > REMAINDER_IDLE_SECONDS:
                del self.seen[group]
                self.other.pop(group, None)
                self.templates.pop(group, None)

    def _remainder_rows(self, label_at: list[int], counter_at: list[int], gauge_at: list[int]) -> list[tuple]:
        rows = []
        for group, totals in sorted(self.other.items(), key=lambda item: tuple(str(v) for v in item[0])):
            row = list(self.templates[group])
            for i in gauge_at:
                row[i] = None  # a gauge of one statement says nothing of the remainder
            for i, value in zip(label_at, (*group, OTHER)):
                row[i] = value
            for i, value in zip(counter_at, totals):
                row[i] = value
            rows.append(tuple(row))
        return rows


def _number(value: Any) -> float:
    return float(value) if value is not None else 0.0
