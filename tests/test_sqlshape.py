"""exporter/sqlshape.py: PostgreSQL's grammar decides what a query's SQL is."""
from __future__ import annotations

import pytest

from exporter.sqlshape import NotAQuery, inspect

QUERIES = [
    "SELECT 1", "VALUES (1), (2)", "TABLE pg_class", "SELECT 1 UNION ALL SELECT 2;",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x", "/* c */ SELECT 1 -- trailing",
    "SELECT ';' AS a, $$; DELETE FROM t$$ AS b, E'\\'; DROP TABLE t' AS c",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_one_read_only_query_passes(sql):
    assert inspect(sql).side_effect_calls == ()


@pytest.mark.parametrize("sql, message", [
    ("", "expected exactly one statement, got 0"),
    ("-- only a comment", "expected exactly one statement, got 0"),
    ("SELECT 1; SELECT 2", "expected exactly one statement, got 2"),
    ("SELECT 1 AS v) AS q; COMMIT; BEGIN READ WRITE; DELETE FROM t; COMMIT; SELECT * FROM (SELECT 1 AS v",
     'not valid SQL: syntax error at or near ")"'),
    ("SET LOCAL statement_timeout = 0", "expected a SELECT, WITH, VALUES or TABLE query, got a SET statement"),
    ("DELETE FROM t", "expected a SELECT, WITH, VALUES or TABLE query, got a DELETE statement"),
    ("WITH d AS (SELECT 1) INSERT INTO t SELECT * FROM d",
     "expected a SELECT, WITH, VALUES or TABLE query, got an INSERT statement"),
    ("EXPLAIN ANALYZE DELETE FROM t", "expected a SELECT, WITH, VALUES or TABLE query, got an EXPLAIN statement"),
    ("COPY t TO STDOUT", "expected a SELECT, WITH, VALUES or TABLE query, got a COPY statement"),
    ("CALL p()", "expected a SELECT, WITH, VALUES or TABLE query, got a CALL statement"),
    ("DO $$ BEGIN END $$", "expected a SELECT, WITH, VALUES or TABLE query, got a DO statement"),
    ("WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d", "a data-modifying WITH (DELETE)"),
    ("SELECT * FROM (WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT a FROM u) s", "a data-modifying WITH (UPDATE)"),
    ("SELECT 1 INTO t2", "SELECT ... INTO creates a table"),
    ("SELECT * FROM t FOR UPDATE", "FOR UPDATE/SHARE locks rows"),
    ("SELECT * FROM (SELECT * FROM t FOR SHARE) s", "FOR UPDATE/SHARE locks rows"),
])
def test_anything_else_is_refused_saying_why(sql, message):
    with pytest.raises(NotAQuery) as raised:
        inspect(sql)
    assert str(raised.value).startswith(message)


def test_calls_with_effects_read_only_does_not_stop_are_named_once_each_in_order():
    shape = inspect("SELECT pg_advisory_lock(1), dblink_exec('x', 'y'), public.lo_unlink(2), pg_notify('c', ''),"
                    " set_config('a.b', 'c', true), pg_terminate_backend(1), txid_current(), pg_current_xact_id(),"
                    " pg_logical_emit_message(true, 'p', 'm'), pg_cancel_backend(1), pg_advisory_lock(2)"
                    " FROM dblink('x', 'SELECT 1') AS d(a int)")
    assert shape.side_effect_calls == (
        "pg_advisory_lock", "dblink_exec", "lo_unlink", "pg_notify", "set_config", "pg_terminate_backend",
        "txid_current", "pg_current_xact_id", "pg_logical_emit_message", "pg_cancel_backend", "dblink")
