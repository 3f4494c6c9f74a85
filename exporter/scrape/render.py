"""Rows -> rendered samples: type conversion, NULLs, duplicates, cardinality, histograms.

Each query run is turned straight into exposition lines (UTF-8 bytes per metric
family and target) so a scrape only sends them; with thousands of rows this is
where the time goes. Gauges and counters are rendered a column at a time: the
text before each value is kept between runs while the label sets are unchanged,
and only values that changed since the last run are formatted again. Histograms
and results with duplicate label sets take the row-by-row path. Both give the
bytes prometheus_client would (tests/test_render_equivalence.py).
"""
from __future__ import annotations

import array
import datetime as dt
import decimal
import itertools
import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Sequence, cast

from exporter.config import MetricSpec, QuerySpec
from exporter.scrape.exposition import escape_label_value, format_value

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
    if isinstance(value, list):  # PostgreSQL's array text form
        return "{" + ",".join(to_label(v) for v in value) + "}"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
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
    """One successful run of a query on a target: exposition lines per metric name.

    The lines are kept as UTF-8 bytes, encoded here (while the next query runs) so
    that a scrape only joins them and sends them.
    """

    lines: dict[str, bytes]
    rows: int
    series: int
    problems: RowProblems
    layout: RowLayout | None = None


@dataclass
class RowLayout:
    """The text before each value (`name{labels} `), per metric and row, of one result.

    Most queries return the same label sets in the same order run after run, so
    this text is kept and reused while the label keys are unchanged, instead of
    being escaped and formatted again on every scrape. Only layouts whose label
    values are all text are reused: text equal to text is the same text, while
    1 == 1.0 == True would render differently.
    """

    target_labels: str
    keys: list[tuple]
    heads: dict[str, list[str]]
    reusable: bool
    # The last run's output per metric, for columns where equal values render to equal text
    # (see _equal_means_same_text): an unchanged column is not rendered again, and in a changed
    # one only the changed rows are formatted.
    columns: dict[str, RenderedColumn] = field(default_factory=dict)


@dataclass
class RenderedColumn:
    values: Sequence
    texts: list[str]
    lines: bytes


def render_rows(
    query: QuerySpec,
    columns: Sequence[str],
    rows: Sequence[tuple],
    target_labels: str,
    histograms: dict[str, dict[tuple, Histogram]],
    previous: RowLayout | None = None,
) -> RenderedRun:
    """Turn a query's rows into exposition lines.

    `target_labels` is the escaped `target="..."` text (plus constant labels);
    `histograms` holds the cumulative histogram state of this query on this target
    and is updated in place; `previous` is the layout of the previous run, reused
    when the label sets have not changed.
    """
    index = {name: i for i, name in enumerate(columns)}
    missing = [c for c in (*query.labels, *(m.column for m in query.metrics)) if c not in index]
    if missing:
        raise InvalidValue(f"the result has no column(s) {', '.join(missing)}; it has {', '.join(columns) or 'none'}")
    problems = RowProblems()
    # Rows of a histogram are observations, not series: there max_series bounds label sets (observe_row).
    plain_only = all(m.type in ("gauge", "counter") for m in query.metrics)
    if plain_only and len(rows) > query.max_series:
        # The fetch asks for one row more than max_series, so this is one truncated run, counted once.
        problems.note("cardinality", f"more than max_series {query.max_series} rows; the rest are not fetched")
        rows = rows[: query.max_series]
    if plain_only:
        keys = _label_keys(rows, [index[name] for name in query.labels], previous.keys if previous else None)
        if keys is not None:
            return _render_by_column(query, index, rows, keys, target_labels, previous, problems)
    return _render_by_row(query, index, rows, target_labels, histograms, problems)


def _label_keys(rows: Sequence[tuple], label_idx: list[int], known: list[tuple] | None = None) -> list[tuple] | None:
    """Each row's label values as a tuple; None when two rows share one (duplicates take the slow path).

    `known` are the previous run's keys, which were unique: the same keys again need no new check.
    """
    if not label_idx:
        return [()] * len(rows) if len(rows) <= 1 else None
    getter = operator.itemgetter(*label_idx)
    keys = list(map(getter, rows)) if len(label_idx) > 1 else [(v,) for v in map(getter, rows)]
    if keys == known:
        return keys
    try:
        unique = len(set(keys)) == len(keys)
    except TypeError:  # an unhashable label value (an array): let the row path report it
        return None
    return keys if unique else None


def _render_by_column(query: QuerySpec, index: dict[str, int], rows: Sequence[tuple], keys: list[tuple],
                      target_labels: str, previous: RowLayout | None, problems: RowProblems) -> RenderedRun:
    """Gauges and counters without duplicate label sets: one metric (column) at a time, with
    the per-row text from the layout, so each sample costs one value format and a join."""
    names = [m.name for m in query.metrics]
    layout = previous
    if layout is None or not layout.reusable or layout.target_labels != target_labels or layout.keys != keys \
            or any(name not in layout.heads for name in names):
        layout = _build_layout(query.labels, names, keys, target_labels)
    lines, series = {}, 0
    by_column = list(zip(*rows)) if rows else [()] * len(index)
    for metric in query.metrics:
        values = by_column[index[metric.column]]
        kinds = set(map(type, values))
        heads = layout.heads[metric.name]
        if not _equal_means_same_text(values, kinds):  # NULLs, text, mixed types: render it all
            layout.columns.pop(metric.name, None)
            text, count = _render_column(metric, heads, values, kinds, problems)
            lines[metric.name] = text.encode("utf-8")
            series += count
            continue
        column = layout.columns.get(metric.name)
        if column is None or column.values != values:
            texts = _format_numbers(values, kinds) if column is None else _update_texts(column, values, kinds)
            column = layout.columns[metric.name] = RenderedColumn(values, texts, _join_lines(heads, texts).encode("utf-8"))
        lines[metric.name] = column.lines
        series += len(values)
    return RenderedRun(lines=lines, rows=len(rows), series=series, problems=problems, layout=layout)


def _update_texts(column: RenderedColumn, values: Sequence, kinds: set) -> list[str]:
    """The texts of a column whose values partly changed since the last run: only changed rows
    are formatted again (rows line up, as the layout's label keys are the same)."""
    changed = list(itertools.compress(range(len(values)), map(operator.ne, column.values, values)))
    if 3 * len(changed) > len(values):
        return _format_numbers(values, kinds)
    texts = column.texts.copy()
    for i in changed:
        texts[i] = format_value(values[i])
    return texts


def _join_lines(heads: Sequence[str], texts: Sequence[str]) -> str:
    parts = ["\n"] * (3 * len(texts))
    parts[0::3] = heads
    parts[1::3] = texts
    return "".join(parts)


def _build_layout(label_names: Sequence[str], names: list[str], keys: list[tuple], target_labels: str) -> RowLayout:
    labels = [target_labels + "".join([f',{n}="{escape_label_value(to_label(v))}"' for n, v in zip(label_names, key)])
              for key in keys]
    heads = {name: [f"{name}{{{text}}} " for text in labels] for name in names}
    reusable = all(type(v) is str or v is None for key in keys for v in key)
    return RowLayout(target_labels=target_labels, keys=keys, heads=heads, reusable=reusable)


def _render_column(metric: MetricSpec, heads: list[str], values: Sequence, kinds: set,
                   problems: RowProblems) -> tuple[str, int]:
    """`head value` lines of one metric (`kinds`: the types among its values); NULLs become the
    default or are left out, text is an invalid value."""
    if _NONE in kinds:
        if metric.default is None:
            pairs = [(h, v) for h, v in zip(heads, values) if v is not None]
            heads, values = [h for h, _ in pairs], [v for _, v in pairs]
        else:
            values = [metric.default if v is None else v for v in values]
        kinds = set(map(type, values))
    if kinds <= _PLAIN_NUMBERS:
        texts = _format_numbers(values, kinds)
    else:
        maybe_texts = list(map(_sample_text, values))
        if None in maybe_texts:  # invalid values: note each and leave those samples out
            for v, text in zip(values, maybe_texts):
                if text is None:
                    problems.note("invalid_value", f"column {metric.column}: {_invalid_reason(v)}")
            pairs = [(h, t) for h, t in zip(heads, maybe_texts) if t is not None]
            heads, texts = [h for h, _ in pairs], [t for _, t in pairs]
        else:
            texts = cast("list[str]", maybe_texts)
    return _join_lines(heads, texts), len(texts)


_NONE = type(None)
_PLAIN_NUMBERS = {int, float}


def _format_numbers(values: Sequence, kinds: set) -> list[str]:
    """format_value of each int/float; a column with many repeats (zeros, small counts, a
    timestamp default) formats each distinct value once."""
    if kinds == _INTS or kinds == _FLOATS:
        distinct = set(values)
        if 2 * len(distinct) < len(values) and _equal_means_same_text(values, kinds):
            text = {v: format_value(v) for v in distinct}
            return list(map(text.__getitem__, values))
    return list(map(format_value, values))


def _equal_means_same_text(values: Sequence, kinds: set) -> bool:
    """Whether equal values among these render to equal text, so they may share it.

    True for all-int columns. For all-float columns unless a -0.0 is present: it equals 0.0
    but renders as "-0.0" (NaN equals nothing, so it never shares). Mixed kinds never: 1 == 1.0
    == True come from different SQL types.
    """
    if kinds == _INTS:
        return True
    if kinds != _FLOATS:
        return False
    raw = array.array("d", values).tobytes()
    at = raw.find(_NEGATIVE_ZERO)
    while at != -1:
        if at % 8 == 0:
            return False
        at = raw.find(_NEGATIVE_ZERO, at + 1)
    return True


_INTS = {int}
_FLOATS = {float}
_NEGATIVE_ZERO = array.array("d", [-0.0]).tobytes()


def _sample_text(value: Any) -> str | None:
    try:
        return format_value(to_number(value))
    except InvalidValue:
        return None


def _invalid_reason(value: Any) -> str:
    try:
        to_number(value)
    except InvalidValue as exc:
        return str(exc)
    return "not a number"


def _render_by_row(query: QuerySpec, index: dict[str, int], rows: Sequence[tuple], target_labels: str,
                   histograms: dict[str, dict[tuple, Histogram]], problems: RowProblems) -> RenderedRun:
    """The general path: histograms, duplicate label sets; row by row, in result order."""
    label_idx = [index[name] for name in query.labels]
    label_names = query.labels
    plain: list[tuple[MetricSpec, int, list[str]]] = [
        (m, index[m.column], []) for m in query.metrics if m.type in ("gauge", "counter")]
    snapshot: list[tuple[MetricSpec, int, dict[tuple, Histogram]]] = [
        (m, index[m.column], {}) for m in query.metrics if m.type == "gauge_histogram"]
    cumulative = [(m, index[m.column], histograms.setdefault(m.name, {})) for m in query.metrics if m.type == "histogram"]
    seen: set[tuple] = set()
    for row in rows:
        key = tuple([row[i] for i in label_idx])
        try:
            hash(key)
        except TypeError:  # an array or json label value: its text is the label
            key = tuple([to_label(v) if isinstance(v, (list, dict)) else v for v in key])
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
            value = _cell(row, col, metric)
            if value is None:
                continue
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
    encoded = {name: text.encode("utf-8") for name, text in lines.items()}
    return RenderedRun(lines=encoded, rows=len(rows), series=series, problems=problems)


def _cell(row: tuple, col: int, metric: MetricSpec) -> Any:
    """The row's value for a metric: its `default` when NULL; None means no sample."""
    value = row[col]
    return metric.default if value is None else value


def observe_row(row: tuple, key: tuple, snapshot: list, cumulative: list, problems: RowProblems, limit: int) -> None:
    for metric, col, groups in (*snapshot, *cumulative):
        value = _cell(row, col, metric)
        if value is None:
            continue
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
