"""Rows -> rendered samples: type conversion, NULLs, duplicates, cardinality, histograms.

Each query run is turned straight into exposition lines (one string per metric
family and target) so a scrape only concatenates; with thousands of rows this
is where the time goes, so label text is built once per row and shared by all
of that row's metrics.
"""
from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from exporter.config import MetricSpec, QuerySpec
from exporter.exposition import escape_label_value, format_value

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class InvalidValue(Exception):
    pass


def to_number(value: Any) -> float | int:
    """A SQL value as a sample value; raises InvalidValue for text and other non-numbers."""
    kind = type(value)
    if kind is int or kind is float:
        return value
    if kind is bool:
        return 1 if value else 0
    if kind is decimal.Decimal:
        return float(value)
    if kind is dt.datetime:
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    if kind is dt.date:
        return (dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc) - _EPOCH).total_seconds()
    if kind is dt.timedelta:
        return value.total_seconds()
    if isinstance(value, (int, float)):  # numpy-like or subclasses
        return float(value)
    raise InvalidValue(f"expected a number, got {kind.__name__}")


def to_label(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, memoryview):
        return value.tobytes().hex()
    return str(value)


@dataclass
class RowProblems:
    invalid_value: int = 0
    duplicate: int = 0
    cardinality: int = 0
    messages: list[str] = field(default_factory=list)

    def note(self, reason: str, message: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        if len(self.messages) < 3:
            self.messages.append(message)


@dataclass
class Histogram:
    """Cumulative histogram state for one label set, kept across runs."""

    bounds: tuple[float, ...]
    counts: list[int]
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str, count_suffix: str, sum_suffix: str) -> list[str]:
        sep = "," if labels else ""
        lines, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            lines.append(f'{name}_bucket{{{labels}{sep}le="{format_value(bound)}"}} {format_value(running)}\n')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {format_value(self.count)}\n')
        brace = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}{count_suffix}{brace} {format_value(self.count)}\n")
        lines.append(f"{name}{sum_suffix}{brace} {format_value(self.total)}\n")
        return lines


def new_histogram(bounds: tuple[float, ...]) -> Histogram:
    return Histogram(bounds=bounds, counts=[0] * len(bounds))


@dataclass
class RenderedRun:
    """One successful run of a query on a target: exposition lines per metric name."""

    lines: dict[str, str]
    rows: int
    series: int
    problems: RowProblems


def render_rows(
    query: QuerySpec,
    columns: Sequence[str],
    rows: Sequence[tuple],
    target_labels: str,
    histograms: dict[str, dict[tuple, Histogram]],
) -> RenderedRun:
    """Turn a query's rows into exposition lines.

    `target_labels` is the escaped `target="..."` text (plus constant labels);
    `histograms` holds the cumulative histogram state of this query on this target
    and is updated in place.
    """
    index = {name: i for i, name in enumerate(columns)}
    missing = [c for c in (*query.labels, *(m.column for m in query.metrics)) if c not in index]
    if missing:
        raise InvalidValue(f"the result has no column(s) {', '.join(missing)}; it has {', '.join(columns) or 'none'}")
    problems = RowProblems()
    if len(rows) > query.max_series:
        problems.note("cardinality", f"{len(rows)} rows exceed max_series {query.max_series}; the rest are dropped")
        problems.cardinality = len(rows) - query.max_series
        rows = rows[: query.max_series]
    label_idx = [index[name] for name in query.labels]
    label_names = query.labels
    plain = [(m, index[m.column], []) for m in query.metrics if m.type in ("gauge", "counter")]
    snapshot = [(m, index[m.column], {}) for m in query.metrics if m.type == "gauge_histogram"]
    cumulative = [(m, index[m.column], histograms.setdefault(m.name, {})) for m in query.metrics if m.type == "histogram"]
    seen: set[tuple] = set()
    for row in rows:
        key = tuple([row[i] for i in label_idx])
        if snapshot or cumulative:
            observe_row(row, key, snapshot, cumulative, problems, query.max_series)
            if not plain:
                continue
        if key in seen:
            problems.note("duplicate", f"duplicate label set {dict(zip(label_names, map(to_label, key)))}; kept the first row")
            continue
        seen.add(key)
        labels = target_labels + "".join(
            [f',{n}="{escape_label_value(to_label(v))}"' for n, v in zip(label_names, key)])
        for metric, col, out in plain:
            value = row[col]
            if value is None:
                if metric.default is None:
                    continue
                value = metric.default
            try:
                out.append(f"{metric.name}{{{labels}}} {format_value(to_number(value))}\n")
            except InvalidValue as exc:
                problems.note("invalid_value", f"column {metric.column}: {exc}")
    lines = {metric.name: "".join(out) for metric, _, out in plain}
    series = sum(len(out) for _, _, out in plain)
    for metric, _, groups in snapshot:
        lines[metric.name], count = _render_histograms(metric, groups, label_names, target_labels, "_gcount", "_gsum",
                                                       always=not label_names)
        series += count
    for metric, _, state in cumulative:
        lines[metric.name], count = _render_histograms(metric, state, label_names, target_labels, "_count", "_sum",
                                                       always=not label_names)
        series += count
    return RenderedRun(lines=lines, rows=len(rows), series=series, problems=problems)


def observe_row(row: tuple, key: tuple, snapshot: list, cumulative: list, problems: RowProblems, limit: int) -> None:
    for metric, col, groups in (*snapshot, *cumulative):
        value = row[col]
        if value is None:
            if metric.default is None:
                continue
            value = metric.default
        try:
            number = float(to_number(value))
        except InvalidValue as exc:
            problems.note("invalid_value", f"column {metric.column}: {exc}")
            continue
        if math.isnan(number):
            problems.note("invalid_value", f"column {metric.column}: NaN cannot be observed in a histogram")
            continue
        hist = groups.get(key)
        if hist is None:
            if len(groups) >= limit:
                problems.note("cardinality", f"more than {limit} label sets in histogram {metric.name}")
                continue
            hist = groups[key] = new_histogram(metric.buckets)
        hist.observe(number)


def _render_histograms(metric: MetricSpec, groups: dict, label_names: Sequence[str], target_labels: str,
                       count_suffix: str, sum_suffix: str, always: bool) -> tuple[str, int]:
    if always and not groups:
        groups = {(): new_histogram(metric.buckets)}
    lines: list[str] = []
    for key, hist in groups.items():
        labels = target_labels + "".join(
            [f',{n}="{escape_label_value(to_label(v))}"' for n, v in zip(label_names, key)])
        lines += hist.render(metric.name, labels, count_suffix, sum_suffix)
    return "".join(lines), len(lines)
