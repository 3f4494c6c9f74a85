"""Rows -> rendered samples: type conversion, NULLs, duplicates, cardinality, histograms.

Each query run is turned straight into exposition lines (UTF-8 bytes per metric
family and target) so a scrape only sends them; with thousands of rows this is
where the time goes. Gauges and counters are rendered a column at a time: the
text before each value is kept between runs while the label sets are unchanged,
and only values that changed since the last run are formatted again. Histograms
and results with duplicate label sets take the row-by-row path. Both give the
bytes prometheus_client would (tests/test_render_equivalence.py).

Memory is bounded in bytes (docs/security.md): the session's SQL nulls out label values
longer than max_label_bytes and adds a ROW_BYTES column (the row's label bytes, -1 when a
value was too long), so a query's rendered size is known from the rows before any text is
built: rows past max_query_bytes are dropped and counted, with C-level work only on the
gauge/counter path. Histogram observations are folded batch by batch into a RowSink while
they are fetched, so they are never all in memory.
"""
from __future__ import annotations

import array
import bisect
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
_INFINITIES: dict[Any, float] = {dt.datetime.max: math.inf, dt.datetime.min: -math.inf,
                                 dt.date.max: math.inf, dt.date.min: -math.inf}
MAX_PROBLEM_CHARS = 300
# The column the session's SQL adds: the row's label bytes, or -1 when a value was over a bound.
ROW_BYTES = "pgvigil_row_bytes"
# Per series line beyond its label values: metric name, label names, quotes, value (an estimate).
LINE_OVERHEAD_BYTES = 64


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
    if kind is dt.datetime or kind is dt.date:
        infinite = _INFINITIES.get(value.replace(tzinfo=None) if kind is dt.datetime else value)
        if infinite is not None:  # psycopg2 reads 'infinity' as datetime.max: +Inf, not year 9999's 2.5e11
            return infinite
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

    def note(self, reason: str, message: str, count: int = 1) -> None:
        setattr(self, reason, getattr(self, reason) + count)
        if len(self.messages) < 3:
            # A message may quote label values: kept short, as it goes to the log and the landing page.
            self.messages.append(message if len(message) <= MAX_PROBLEM_CHARS else message[:MAX_PROBLEM_CHARS] + "...")


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
    rows: Sequence[tuple] | RowSink,
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
    if isinstance(rows, RowSink):  # a histogram query, folded while it was fetched
        return rows.finish(target_labels, histograms)
    index = {name: i for i, name in enumerate(columns)}
    missing = [c for c in (*query.labels, *(m.column for m in query.metrics)) if c not in index]
    if missing:
        shown = ", ".join(c for c in columns if c != ROW_BYTES) or "none"
        raise InvalidValue(f"the result has no column(s) {', '.join(missing)}; it has {shown}")
    problems = RowProblems()
    if ROW_BYTES in index and rows:
        rows = _within_bytes(query, rows, index[ROW_BYTES], target_labels, problems)
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
        distinct = set(keys)
    except TypeError:  # an unhashable label value (an array): let the row path report it
        return None
    has_null = (None,) in distinct if len(label_idx) == 1 else any(None in key for key in distinct)
    if len(distinct) == len(keys) and has_null:
        # NULL renders as the empty string: (NULL,) beside ('',) would be one series twice
        distinct = {tuple("" if v is None else v for v in key) for key in distinct}
    return keys if len(distinct) == len(keys) else None


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
            encoded = _join_lines(heads, texts).encode("utf-8")
            column = layout.columns[metric.name] = RenderedColumn(values, texts, encoded)
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
    sink = RowSink(query, histograms, problems)
    sink.start(index)
    sink.feed(rows)
    return sink.finish(target_labels, histograms)


class RowSink:
    """Rows folded one batch at a time: histogram observations and the first row of each label set.

    The session feeds it each batch as it is fetched (a histogram query may return millions of
    rows), so only label sets are kept, never observations. The cumulative histograms are read
    while rows come in (a label set they hold is always observed) and changed only by finish(),
    so a query that fails half-way leaves them as they were.
    """

    def __init__(self, query: QuerySpec, histograms: dict[str, dict[tuple, Histogram]],
                 problems: RowProblems | None = None) -> None:
        self.query = query
        self.problems = problems or RowProblems()
        self.rows = 0
        self._existing = histograms
        self._index: dict[str, int] = {}
        self._first: dict[tuple, tuple] = {}  # label set -> its first row, for gauges and counters
        self._deltas: dict[str, dict[tuple, Histogram]] = {}
        self._new_keys: set[tuple] = set()  # label sets not yet in the cumulative histograms
        self._label_bytes = 0  # of the label sets kept, for max_query_bytes

    def start(self, index: dict[str, int]) -> None:
        """The result's columns (name -> position), known once the first batch arrives."""
        missing = [c for c in (*self.query.labels, *(m.column for m in self.query.metrics)) if c not in index]
        if missing:
            raise InvalidValue(f"the result has no column(s) {', '.join(missing)}")
        self._index = index
        self._label_idx = [index[name] for name in self.query.labels]
        self._bytes_idx = index.get(ROW_BYTES)
        self._plain = [m for m in self.query.metrics if m.type in ("gauge", "counter")]
        self._observed = [(m, index[m.column], self._deltas.setdefault(m.name, {}), self._existing.get(m.name, {}))
                          for m in self.query.metrics if m.type in ("gauge_histogram", "histogram")]
        # Lines one label set renders to: each histogram's buckets, +Inf, _count and _sum, and the gauges.
        self._lines_per_series = max(1, sum(len(m.buckets) + 3 for m, *_ in self._observed) + len(self._plain))

    def feed(self, rows: Sequence[tuple]) -> None:
        self.rows += len(rows)
        for row in rows:
            if self._bytes_idx is not None and (row[self._bytes_idx] or 0) < 0:
                self.problems.note("cardinality", f"a label value is longer than max_label_bytes "
                                                  f"{self.query.max_label_bytes}; row dropped")
                continue
            # NULL renders as the empty string: one key for both, or they would be one series twice
            key = tuple(["" if row[i] is None else row[i] for i in self._label_idx])
            try:
                hash(key)
            except TypeError:  # an array or json label value: its text is the label
                key = tuple([to_label(v) if isinstance(v, (list, dict)) else v for v in key])
            if self._observed:
                self._observe(row, key)
            if self._plain:
                self._keep_first(row, key)

    def _observe(self, row: tuple, key: tuple) -> None:
        limit = self.query.max_series
        for metric, col, deltas, existing in self._observed:
            value = _cell(row, col, metric)
            if value is None:
                continue
            try:
                number = float(to_number(value))
            except InvalidValue as exc:
                self.problems.note("invalid_value", f"column {metric.column}: {exc}")
                continue
            if math.isnan(number):
                self.problems.note("invalid_value", f"column {metric.column}: NaN cannot be observed in a histogram")
                continue
            hist = deltas.get(key)
            if hist is None:
                if key not in existing and not self._admit(key, metric, len(existing), limit):
                    continue
                hist = deltas[key] = new_histogram(metric.buckets)
            hist.observe(number)

    def _admit(self, key: tuple, metric: MetricSpec, existing: int, limit: int) -> bool:
        """Whether a label set new to the cumulative histogram fits max_series and max_query_bytes."""
        if key in self._new_keys:
            return True
        if existing + len(self._new_keys) >= limit:
            self.problems.note("cardinality", f"more than {limit} label sets in histogram {metric.name}")
            return False
        if not self._fits(key):
            return False
        self._new_keys.add(key)
        return True

    def _fits(self, key: tuple) -> bool:
        """Whether a new label set's lines still fit max_query_bytes (escaping at most doubles a value)."""
        line = 2 * sum(len(to_label(v).encode("utf-8", "surrogatepass")) for v in key) + LINE_OVERHEAD_BYTES \
            + sum(len(n) + 4 for n in self.query.labels)
        size = line * self._lines_per_series
        if self._label_bytes + size > self.query.max_query_bytes:
            self.problems.note("cardinality", f"the text would pass max_query_bytes {self.query.max_query_bytes}")
            return False
        self._label_bytes += size
        return True

    def _keep_first(self, row: tuple, key: tuple) -> None:
        if key in self._first:
            labels = dict(zip(self.query.labels, map(to_label, key)))
            self.problems.note("duplicate", f"duplicate label set {labels}; kept the first row")
            return
        if len(self._first) >= self.query.max_series:  # beside a histogram, rows are observations, not series
            self.problems.note("cardinality", f"more than max_series {self.query.max_series} label sets")
            return
        self._first[key] = row

    def finish(self, target_labels: str, histograms: dict[str, dict[tuple, Histogram]]) -> RenderedRun:
        """The run's lines; the observations join the cumulative histograms (in `histograms`) now."""
        label_names = self.query.labels
        lines: dict[str, str] = {}
        series = 0
        for metric in self._plain:
            col = self._index[metric.column]
            out = []
            for key, row in self._first.items():
                value = _cell(row, col, metric)
                if value is None:
                    continue
                try:
                    text = format_value(to_number(value))
                except InvalidValue as exc:
                    self.problems.note("invalid_value", f"column {metric.column}: {exc}")
                    continue
                out.append(f"{metric.name}{{{_labels(target_labels, label_names, key)}}} {text}\n")
            lines[metric.name] = "".join(out)
            series += len(out)
        for metric, _, deltas, _ in self._observed:
            if metric.type == "gauge_histogram":
                groups, suffixes = deltas, ("_gcount", "_gsum")
            else:
                groups, suffixes = _merge(histograms.setdefault(metric.name, {}), deltas), ("_count", "_sum")
            lines[metric.name], count = _render_histograms(metric, groups, label_names, target_labels, *suffixes,
                                                           always=not label_names)
            series += count
        encoded = {name: text.encode("utf-8") for name, text in lines.items()}
        return RenderedRun(lines=encoded, rows=self.rows, series=series, problems=self.problems)


def _merge(cumulative: dict[tuple, Histogram], deltas: dict[tuple, Histogram]) -> dict[tuple, Histogram]:
    for key, delta in deltas.items():
        hist = cumulative.get(key)
        if hist is None:
            cumulative[key] = delta
            continue
        hist.counts = [a + b for a, b in zip(hist.counts, delta.counts)]
        hist.total += delta.total
        hist.count += delta.count
    return cumulative


def _labels(target_labels: str, label_names: Sequence[str], key: tuple) -> str:
    return target_labels + "".join([f',{n}="{escape_label_value(to_label(v))}"' for n, v in zip(label_names, key)])


def _within_bytes(query: QuerySpec, rows: Sequence[tuple], col: int, target_labels: str,
                  problems: RowProblems) -> Sequence[tuple]:
    """The rows whose series fit max_query_bytes, without the ones with a value past its bound.

    ROW_BYTES holds each row's label bytes; everything here runs in C (map, accumulate, bisect),
    never Python code per row, as this is on the gauge/counter path."""
    sizes = list(map(operator.itemgetter(col), rows))
    if min(sizes) < 0:
        dropped = sizes.count(-1)
        problems.note("cardinality", f"{dropped} row(s) with a label value longer than max_label_bytes "
                                     f"{query.max_label_bytes}; dropped", dropped)
        rows = list(itertools.compress(rows, map((-1).__ne__, sizes)))
        sizes = list(itertools.compress(sizes, map((-1).__ne__, sizes)))
    metrics = max(1, len(query.metrics))
    per_line = len(target_labels) + LINE_OVERHEAD_BYTES + sum(len(n) + 4 for n in query.labels) + \
        max((len(m.name) for m in query.metrics), default=0)
    budget = query.max_query_bytes // metrics
    if sum(sizes) + per_line * len(sizes) <= budget:  # the usual case: everything fits
        return rows
    ends = list(itertools.accumulate(map(operator.add, sizes, itertools.repeat(per_line))))
    fit = bisect.bisect_right(ends, budget)
    if fit < len(rows):
        # Counted once per run, like rows past max_series: the rest of the result is not even fetched.
        problems.note("cardinality", f"the query's text would pass max_query_bytes {query.max_query_bytes}; "
                                     "the rest of the rows are dropped")
        rows = rows[:fit]
    return rows


def _cell(row: tuple, col: int, metric: MetricSpec) -> Any:
    """The row's value for a metric: its `default` when NULL; None means no sample."""
    value = row[col]
    return metric.default if value is None else value


def _render_histograms(metric: MetricSpec, groups: dict, label_names: Sequence[str], target_labels: str,
                       count_suffix: str, sum_suffix: str, always: bool) -> tuple[str, int]:
    if always and not groups:
        groups = {(): new_histogram(metric.buckets)}
    lines: list[str] = []
    for key, hist in groups.items():
        lines += hist.render(metric.name, _labels(target_labels, label_names, key), count_suffix, sum_suffix)
    return "".join(lines), len(lines)
