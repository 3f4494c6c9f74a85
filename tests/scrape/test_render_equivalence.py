"""The fast query-result renderer against prometheus_client's own text renderer.

pgvigil renders query results itself (column by column, label text kept between
runs, unchanged columns reused) because prometheus_client's generic renderer is
too slow for 100k+ samples. These tests hold it to byte equality with
`generate_latest` for the same data, parse the output back, and compare the fast
path with the row-by-row path on inputs only the latter used to see.
"""
from __future__ import annotations

import datetime as dt
import decimal
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import parse_config
from exporter.scrape.assembly import scrape_once
from exporter.scrape.exposition import family_header
from exporter.scrape.render import RowProblems, _render_by_row, render_rows

# Label names sort after "target", so prometheus_client's sorted label order is ours too.
CONFIG = """
collectors: []
targets: {t1: {dsn: "postgresql://u@127.0.0.1:1/x"}}
queries:
  - name: eq
    help: "Equivalence \\\\ check"
    sql: SELECT 1
    labels: [u_name, v_kind]
    metrics:
      g: {type: gauge, help: "A gauge\\nwith a newline"}
      d: {type: gauge, default: -1.5}
      c: {type: counter, name: eq_events_total}
"""
COLUMNS = ["u_name", "v_kind", "g", "d", "c"]
TARGET_LABELS = 'target="t1",tenant="a \\"b\\""'
TARGET_LABEL_VALUES = {"target": "t1", "tenant": 'a "b"'}


@pytest.fixture(scope="module")
def query():
    return parse_config(CONFIG).queries[0]


def reference_number(value) -> float:
    """The documented value conversions, written out independently of exporter.scrape.render."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return float(value)


def reference_label(value) -> str:
    return "" if value is None else str(value)


def reference_exposition(query, rows, target_labels=TARGET_LABEL_VALUES) -> str:
    """The same samples through prometheus_client's generate_latest."""
    class Rows:
        def collect(self):
            for metric in query.metrics:
                # prometheus_client names a counter family without `_total` and adds it back on output.
                family = Metric(metric.name.removesuffix("_total"), metric.help, metric.type)
                col = COLUMNS.index(metric.column)
                for row in rows:
                    value = row[col] if row[col] is not None else metric.default
                    if value is None:
                        continue
                    labels = dict(target_labels, u_name=reference_label(row[0]), v_kind=reference_label(row[1]))
                    family.add_sample(metric.name, labels, reference_number(value))
                if family.samples:
                    yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Rows())
    return generate_latest(registry).decode("utf-8")


def pgvigil_exposition(query, run) -> str:
    return "".join(family_header(m.name, m.help, m.type) + run.lines[m.name].decode("utf-8")
                   for m in query.metrics if run.lines[m.name])


numbers = st.one_of(
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
    st.sampled_from([0, 1, 999_999, 1_000_000, 1_234_567, 10 ** 10, 10 ** 15, 2 ** 53, 2 ** 53 + 1, -(2 ** 53) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e6, 1.5e10, 1718000000.123456, 5e-324, 1e22, float("nan"), float("-inf")]),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-10 ** 12, max_value=10 ** 12),
    st.booleans(),
    st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2100, 1, 1),
                 timezones=st.just(dt.timezone.utc)),
    st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=3000)),
)
label_text = st.one_of(st.text(min_size=0, max_size=12),
                       st.sampled_from(['q"uote', "back\\slash", "new\nline", "ünï", ""]))
rows_strategy = st.lists(
    st.tuples(label_text, st.one_of(st.none(), st.sampled_from(["a", "b"])),
              st.one_of(st.none(), numbers), st.one_of(st.none(), numbers), numbers),
    max_size=40, unique_by=lambda r: (r[0], r[1]))

# Columns of ints only: the case where an unchanged column's text is reused.
small_ints = st.integers(min_value=-3, max_value=3)
int_rows_strategy = st.lists(st.tuples(label_text, st.sampled_from(["a", "b"]), small_ints, small_ints, small_ints),
                             min_size=1, max_size=20, unique_by=lambda r: (r[0], r[1]))
# Columns of floats with repeats, where a -0.0 (equal to 0.0, rendered apart) must not share text.
few_floats = st.sampled_from([0.0, -0.0, 1.5, 1718000000.25, 2e6, float("nan"), float("inf")])
float_rows_strategy = st.lists(st.tuples(label_text, st.sampled_from(["a", "b"]), few_floats, few_floats, few_floats),
                               min_size=1, max_size=20, unique_by=lambda r: (r[0], r[1]))
any_rows = st.one_of(rows_strategy, int_rows_strategy, float_rows_strategy)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=any_rows)
def test_fast_renderer_is_byte_identical_to_generate_latest(query, rows):
    run = render_rows(query, COLUMNS, rows, TARGET_LABELS, {})
    assert pgvigil_exposition(query, run) == reference_exposition(query, rows)
    assert run.series == sum(1 for r in rows for v, m in zip(r[2:], query.metrics)
                             if v is not None or m.default is not None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=any_rows,
       changes=st.lists(st.tuples(st.integers(0, 39), st.integers(2, 4), st.one_of(small_ints, few_floats, numbers)),
                        max_size=6))
def test_reused_layout_and_columns_follow_the_new_values(query, first, changes):
    """A second run reuses the label text and unchanged columns; whatever changed must show."""
    previous = render_rows(query, COLUMNS, first, TARGET_LABELS, {})
    second = [list(r) for r in first]
    for row, col, value in changes:
        if row < len(second):
            second[row][col] = value
    second = [tuple(r) for r in second]
    run = render_rows(query, COLUMNS, second, TARGET_LABELS, {}, previous.layout)
    assert pgvigil_exposition(query, run) == reference_exposition(query, second)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=any_rows, second=any_rows, reorder=st.booleans())
def test_a_layout_from_other_label_sets_is_not_reused(query, first, second, reorder):
    """Rows added, removed, relabelled or in another order: the old layout must not leak through."""
    previous = render_rows(query, COLUMNS, first, TARGET_LABELS, {})
    if reorder:
        second = list(reversed(first))
    run = render_rows(query, COLUMNS, second, TARGET_LABELS, {}, previous.layout)
    assert pgvigil_exposition(query, run) == reference_exposition(query, second)


def test_a_changed_int_column_is_rendered_again(query):
    first = [(f"t{i}", "a", i, 0, 7) for i in range(10)]
    previous = render_rows(query, COLUMNS, first, TARGET_LABELS, {})
    second = [(f"t{i}", "a", i, 0, 8 if i == 9 else 7) for i in range(10)]
    run = render_rows(query, COLUMNS, second, TARGET_LABELS, {}, previous.layout)
    assert run.lines["eq_g"] is previous.lines["eq_g"]  # unchanged: reused as is
    assert pgvigil_exposition(query, run) == reference_exposition(query, second)


@pytest.mark.parametrize("position", [0, 1, 7, 19])
def test_a_negative_zero_among_repeated_float_zeros_keeps_its_sign(query, position):
    zeros = [0.0] * 20
    zeros[position] = -0.0
    rows = [(f"t{i}", "a", z, z, 1) for i, z in enumerate(zeros)]
    previous = render_rows(query, COLUMNS, [(f"t{i}", "a", 0.0, 0.0, 1) for i in range(20)], TARGET_LABELS, {})
    for layout in (None, previous.layout):
        run = render_rows(query, COLUMNS, rows, TARGET_LABELS, {}, layout)
        assert pgvigil_exposition(query, run) == reference_exposition(query, rows)
        assert run.lines["eq_g"].count(b" -0.0\n") == 1


def test_zero_signs_and_int_float_twins_are_not_reused_across_runs(query):
    """0 == -0.0 == False and 1 == 1.0 == True, but they render differently or come from other types."""
    first = [("a", "x", 0, 0, 1), ("b", "x", 1, 1, 2)]
    previous = render_rows(query, COLUMNS, first, TARGET_LABELS, {})
    second = [("a", "x", -0.0, 0, 1), ("b", "x", True, 1, 2)]
    run = render_rows(query, COLUMNS, second, TARGET_LABELS, {}, previous.layout)
    assert pgvigil_exposition(query, run) == reference_exposition(query, second)
    assert b"-0.0" in run.lines["eq_g"]


@pytest.mark.parametrize("rows", [
    [("a", "x", 1, 2, 3), ("a", "x", 4, 5, 6)],                       # duplicate label set
    [("a", "x", "text", 2, 3), ("b", "x", 1, "more text", 3)],        # invalid values
    [("a", "x", None, None, 3), ("b", None, decimal.Decimal("2.50"), None, True)],
    [],
])
def test_fast_path_matches_the_row_path(query, rows):
    fast = render_rows(query, COLUMNS, rows, TARGET_LABELS, {})
    problems = RowProblems()
    slow = _render_by_row(query, {c: i for i, c in enumerate(COLUMNS)}, rows, TARGET_LABELS, {}, problems)
    assert fast.lines == slow.lines
    assert (fast.series, fast.problems.invalid_value, fast.problems.duplicate) == \
        (slow.series, problems.invalid_value, problems.duplicate)


def test_many_rows_parse_back_with_every_value(query):
    rows = [(f"t_{i}", "k" if i % 2 else None, i * 7919 % 10 ** 7, (i % 3 or None) and i / 3, 10 ** 9 + i)
            for i in range(5000)]
    run = render_rows(query, COLUMNS, rows, TARGET_LABELS, {})
    again = render_rows(query, COLUMNS, rows, TARGET_LABELS, {}, run.layout)
    assert again.layout is run.layout and again.lines == run.lines
    parsed = {}
    for family in text_string_to_metric_families(pgvigil_exposition(query, run)):
        for sample in family.samples:
            parsed[(sample.name, sample.labels["u_name"])] = sample.value
    assert len(parsed) == 5000 * 3
    for name, labels, value in [("eq_g", "t_10", 79190.0), ("eq_d", "t_3", -1.5), ("eq_d", "t_4", 4 / 3),
                                ("eq_events_total", "t_4999", 10 ** 9 + 4999)]:
        assert math.isclose(parsed[(name, labels)], value)


def test_scrape_of_a_real_table_matches_generate_latest(cluster, fresh_db):
    """End to end: rows from PostgreSQL, through the runner, equal prometheus_client's text."""
    cluster.execute(
        "CREATE TABLE eq_rows AS SELECT 'r' || g AS u_name, CASE WHEN g % 4 = 0 THEN NULL ELSE 'k\"' || (g % 3) END"
        " AS v_kind, (g * 104729) % 100000000 AS g, CASE WHEN g % 5 = 0 THEN NULL ELSE g * 1.25 END AS d,"
        " (g::bigint << 40) AS c FROM generate_series(1, 3000) g", dbname=fresh_db.rsplit("/", 1)[1])
    config = parse_config(CONFIG.replace('postgresql://u@127.0.0.1:1/x', fresh_db)
                          .replace("sql: SELECT 1", "sql: SELECT u_name, v_kind, g, d, c FROM eq_rows"))
    text = scrape_once(config, timeout=30)
    rows = cluster.execute("SELECT u_name, v_kind, g, d, c FROM eq_rows", dbname=fresh_db.rsplit("/", 1)[1])
    query = config.queries[0]
    names = {m.name for m in query.metrics}
    ours = "".join(line + "\n" for line in text.splitlines()
                   if (line.split(" ")[2] if line.startswith("#") else line.split("{")[0]) in names)
    assert ours == reference_exposition(query, rows, {"target": "t1"})
