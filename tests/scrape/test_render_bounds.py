"""Byte bounds in the renderer: rows folded batch by batch, rows past a bound dropped and counted.

No database: the rows are what the session's bounded SQL returns (ROW_BYTES last).
tests/test_security.py proves the same bounds against PostgreSQL, with peak RSS.
"""
from __future__ import annotations

import dataclasses

from exporter.config import parse_config
from exporter.scrape.render import ROW_BYTES, RowSink, render_rows
from exporter.scrape.session import bounded_columns, prepare_sql

CONFIG = """collectors: []
targets:
  db:
    dsn: postgresql://u@127.0.0.1:1/x
queries:
  - {name: h, max_series: 3, sql: SELECT 1, labels: [l], metrics: {v: {type: histogram, buckets: [1, 2]}, g: {}}}
  - {name: p, sql: SELECT 1, labels: [l], metrics: {v: {}}}
"""
HIST, PLAIN = parse_config(CONFIG).queries
TARGET = 'target="db"'
ROWS = [(f"k{i % 5}", i % 3, i, 1) for i in range(40)] + [("k1", "text", 1, 1), ("k2", float("nan"), 1, 1)]
INDEX = {"l": 0, "v": 1, "g": 2, ROW_BYTES: 3}


def test_folding_in_batches_equals_folding_at_once():
    whole: dict = {}
    at_once = render_rows(HIST, list(INDEX), ROWS, TARGET, whole)
    batched: dict = {}
    sink = RowSink(HIST, batched)
    sink.start(INDEX)
    for start in range(0, len(ROWS), 7):
        sink.feed(ROWS[start:start + 7])
    run = render_rows(HIST, list(INDEX), sink, TARGET, batched)
    assert run.lines == at_once.lines
    assert (run.rows, run.series) == (at_once.rows, at_once.series)
    problems = (run.problems.invalid_value, run.problems.duplicate, run.problems.cardinality)
    assert problems == (at_once.problems.invalid_value, at_once.problems.duplicate, at_once.problems.cardinality)
    # k3 and k4 (8 rows each) are past max_series 3: for the histogram and for the gauge beside it.
    assert run.problems.cardinality == 2 * 16


def test_a_run_that_fails_while_fetching_leaves_the_histograms_unchanged():
    cumulative: dict = {}
    render_rows(HIST, list(INDEX), ROWS, TARGET, cumulative)
    before = {key: dataclasses.replace(h, counts=list(h.counts)) for key, h in cumulative["h_v"].items()}
    sink = RowSink(HIST, cumulative)
    sink.start(INDEX)
    sink.feed(ROWS)  # ... and the query then fails: finish() never runs
    assert cumulative["h_v"] == before


def test_rows_with_a_value_past_its_bound_are_dropped_and_counted():
    rows = [("a", 1, 1), ("b", None, -1), ("c", 3, 1), ("d", None, -1)]
    run = render_rows(PLAIN, ["l", "v", ROW_BYTES], rows, TARGET, {})
    assert run.lines["p_v"] == b'p_v{target="db",l="a"} 1.0\np_v{target="db",l="c"} 3.0\n'
    assert run.problems.cardinality == 2


def test_rows_past_max_query_bytes_are_dropped_counted_once():
    query = dataclasses.replace(PLAIN, max_query_bytes=1000)
    rows = [(f"{i:0100}", i, 100) for i in range(50)]
    run = render_rows(query, ["l", "v", ROW_BYTES], rows, TARGET, {})
    assert 500 < len(run.lines["p_v"]) <= 1000  # the estimate before rendering errs on the safe side
    assert run.problems.cardinality == 1


def test_the_bounded_select_list_quotes_columns_and_bounds_each_value():
    query = dataclasses.replace(PLAIN, labels=('we"ird',), max_label_bytes=10)
    columns = bounded_columns(query)
    assert 'pgvigil_query."we""ird"' in columns
    assert "pg_catalog.octet_length(pgvigil_query.\"we\"\"ird\"::pg_catalog.text) > 10" in columns
    assert "pg_catalog.pg_column_size(pgvigil_query.\"v\") > 64" in columns and columns.endswith(f"AS {ROW_BYTES}")


def test_a_batch_holds_a_bounded_number_of_bytes():
    prepared = prepare_sql(HIST, None)
    assert prepared.sink is not None and prepared.limit is None
    worst_row = 2048 + 4 * 164
    assert prepared.batch_rows is not None and prepared.batch_rows * worst_row <= 16 * 1024 * 1024
