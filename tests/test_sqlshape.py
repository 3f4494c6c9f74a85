"""exporter/sqlshape.py: PostgreSQL's grammar decides what a query's SQL is, and what it calls."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid

import psycopg
import pytest
from conftest import config_for, parse_exposition, sample, wait_until

from exporter.config import ConfigError, parse_config
from exporter.sqlshape import MAX_NESTING, OPT_IN, NotAQuery, inspect

QUERIES = [
    "SELECT 1", "VALUES (1), (2)", "TABLE pg_class", "SELECT 1 UNION ALL SELECT 2;",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x", "/* c */ SELECT 1 -- trailing",
    "SELECT ';' AS a, $$; DELETE FROM t$$ AS b, E'\\'; DROP TABLE t' AS c",
    # calls that only read, or whose effect ends with the query's transaction
    "SELECT currval('s'), lastval(), random(), clock_timestamp(), pg_export_snapshot(), pg_stat_clear_snapshot()",
    "SELECT txid_current_if_assigned(), pg_current_xact_id_if_assigned(), pg_ls_waldir(), pg_current_wal_lsn()",
    "SELECT set_config('work_mem', '1MB', true), set_config('a.b', 'c', is_local => 'on')",
    "SELECT 'lo_create(0)' AS text_not_a_call, \"lo_create\" FROM (SELECT 1 AS lo_create) s",
    "SELECT s.lo_compat_privileges, (s).lo_compat_privileges FROM (SELECT 1 AS lo_compat_privileges) s",
    # SQL strings that are literals and only read
    "SELECT query_to_xml('SELECT 1', true, false, '')",
    "SELECT query_to_xml(query => E'SELECT \\'x\\'', nulls => true, tableforest => false, targetns => '')",
    "SELECT query_to_xmlschema($q$SELECT relname FROM pg_class$q$, true, false, '')",
    "SELECT query_to_xml_and_xmlschema(U&'SELECT \\0031', true, false, '')",
    "SELECT query_to_xml('SELECT ' || 'relname FROM ' || 'pg_class', true, false, '')",
    "SELECT query_to_xml('SELECT 1'::text COLLATE \"C\", true, false, '')",
    "SELECT * FROM ts_stat('SELECT to_tsvector(relname) FROM pg_class')",
    "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery')",
    "SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)",  # no SQL in this one
    "SELECT * FROM crosstab('SELECT 1, 2, 3', 'SELECT 2') AS c(a int, b int)",
    "SELECT * FROM crosstab('SELECT 1, 2, 3', 2) AS c(a int, b int)",
    "SELECT query_to_xml(NULL, true, false, '')",  # runs nothing
    "SELECT table_to_xml('pg_class', true, false, ''), table_to_xmlschema('pg_namespace'::regclass, true, false, '')",
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


# -- calls whose effects a read-only transaction does not stop --------------------------------------------------

LARGE_OBJECT = ("large objects: a read-only transaction does not stop creating, writing or removing them "
                "(lo_import and lo_export also read and write the server's files)")
ADVISORY_LOCK = ("advisory locks: a read-only transaction does not stop them; a session-level lock outlives the "
                 "query, a transaction-level one blocks other sessions while the query runs")
NOTIFY = "notifies the channel's listeners when the transaction commits, read-only or not"
SEQUENCE = ("changes a sequence, which is never rolled back (a read-only transaction refuses it for permanent "
            "sequences only)")
SESSION = "changes the session's state: later queries on the same connection run with it"
SETTING = ("with is_local not true: the setting lasts the session, so later queries on the same connection run "
           "with it (is_local true ends it with the query's transaction)")
SERVER = ("signals other sessions or acts on the server (configuration, log, WAL, backups, promotion), which a "
          "read-only transaction does not stop")
REPLICATION = "acts on replication slots, replication origins or the WAL, which a read-only transaction does not stop"
RESET = "resets statistics everyone else reads, which a read-only transaction does not stop"
WRITES = "writes indexes, the catalog or files, which a read-only transaction does not stop"
CACHE = "loads or evicts shared buffers (or starts a worker that does), pushing out what the server needs cached"
OTHER_SERVER = ("connects to another server: what runs there is not read-only, and a silent host keeps the backend "
                "waiting past the query's statement_timeout")
BUILDS_SQL = "builds SQL from its text arguments and runs it, which pgvigil cannot check"
CURSOR = "reads a cursor opened elsewhere, whose query pgvigil cannot check"
WHOLE_DATABASE = "runs a query on every table and view of a schema or database, into one value"

# (function, a call of it, why): every class of docs/security.md's table, several members of each.
REFUSED = [
    ("lo_create", "lo_create(0)", LARGE_OBJECT), ("lo_creat", "lo_creat(-1)", LARGE_OBJECT),
    ("lo_from_bytea", "lo_from_bytea(0, 'x')", LARGE_OBJECT), ("lo_import", "lo_import('/etc/passwd')", LARGE_OBJECT),
    ("lo_export", "lo_export(1, '/tmp/x')", LARGE_OBJECT), ("lo_put", "lo_put(1, 0, 'x')", LARGE_OBJECT),
    ("lo_unlink", "lo_unlink(1)", LARGE_OBJECT), ("lowrite", "lowrite(0, 'x')", LARGE_OBJECT),
    ("pg_advisory_lock", "pg_advisory_lock(1)", ADVISORY_LOCK),
    ("pg_advisory_lock_shared", "pg_advisory_lock_shared(1, 2)", ADVISORY_LOCK),
    ("pg_advisory_xact_lock", "pg_advisory_xact_lock(1)", ADVISORY_LOCK),
    ("pg_try_advisory_lock", "pg_try_advisory_lock(1)", ADVISORY_LOCK),
    ("pg_try_advisory_xact_lock_shared", "pg_try_advisory_xact_lock_shared(1)", ADVISORY_LOCK),
    ("pg_advisory_unlock_all", "pg_advisory_unlock_all()", ADVISORY_LOCK),
    ("pg_notify", "pg_notify('c', 'x')", NOTIFY),
    ("nextval", "nextval('s')", SEQUENCE), ("setval", "setval('s', 1)", SEQUENCE),
    ("setseed", "setseed(0.5)", SESSION), ("postgres_fdw_disconnect_all", "postgres_fdw_disconnect_all()", SESSION),
    ("pg_terminate_backend", "pg_terminate_backend(1)", SERVER), ("pg_cancel_backend", "pg_cancel_backend(1)", SERVER),
    ("pg_reload_conf", "pg_reload_conf()", SERVER), ("pg_rotate_logfile", "pg_rotate_logfile()", SERVER),
    ("pg_promote", "pg_promote()", SERVER), ("pg_switch_wal", "pg_switch_wal()", SERVER),
    ("pg_create_restore_point", "pg_create_restore_point('x')", SERVER),
    ("pg_log_backend_memory_contexts", "pg_log_backend_memory_contexts(1)", SERVER),
    ("pg_backup_start", "pg_backup_start('x')", SERVER), ("pg_start_backup", "pg_start_backup('x')", SERVER),
    ("pg_wal_replay_pause", "pg_wal_replay_pause()", SERVER),
    ("pg_logical_emit_message", "pg_logical_emit_message(false, 'p', 'm')", REPLICATION),
    ("pg_create_logical_replication_slot", "pg_create_logical_replication_slot('s', 'test_decoding')", REPLICATION),
    ("pg_copy_physical_replication_slot", "pg_copy_physical_replication_slot('a', 'b')", REPLICATION),
    ("pg_drop_replication_slot", "pg_drop_replication_slot('s')", REPLICATION),
    ("pg_logical_slot_get_changes", "pg_logical_slot_get_changes('s', NULL, NULL)", REPLICATION),
    ("pg_replication_origin_create", "pg_replication_origin_create('o')", REPLICATION),
    ("pg_stat_reset", "pg_stat_reset()", RESET), ("pg_stat_reset_shared", "pg_stat_reset_shared('bgwriter')", RESET),
    ("pg_stat_statements_reset", "pg_stat_statements_reset()", RESET),
    ("pg_qualstats_reset", "pg_qualstats_reset()", RESET),
    ("gin_clean_pending_list", "gin_clean_pending_list('i')", WRITES),
    ("brin_summarize_range", "brin_summarize_range('i', 0)", WRITES),
    ("pg_import_system_collations", "pg_import_system_collations('pg_catalog')", WRITES),
    ("pg_nextoid", "pg_nextoid('pg_class', 'oid', 'pg_class_oid_index')", WRITES),
    ("binary_upgrade_set_next_pg_type_oid", "binary_upgrade_set_next_pg_type_oid(1)", WRITES),
    ("pg_file_write", "pg_file_write('f', 'x', false)", WRITES),
    ("heap_force_kill", "heap_force_kill('t', '{}')", WRITES),
    ("pg_restore_relation_stats", "pg_restore_relation_stats('relation', 't')", WRITES),
    ("pg_prewarm", "pg_prewarm('t')", CACHE), ("autoprewarm_dump_now", "autoprewarm_dump_now()", CACHE),
    ("pg_buffercache_evict", "pg_buffercache_evict(1)", CACHE),
    ("dblink", "dblink('host=h', 'SELECT 1')", OTHER_SERVER),
    ("dblink_exec", "dblink_exec('host=h', 'x')", OTHER_SERVER),
    ("dblink_connect", "dblink_connect('host=h')", OTHER_SERVER),
    ("dblink_open", "dblink_open('c', 'SELECT 1')", OTHER_SERVER),
    ("dblink_send_query", "dblink_send_query('c', 'SELECT 1')", OTHER_SERVER),
    ("connectby", "connectby('t', 'id', 'parent', '1', 0)", BUILDS_SQL),
    ("xpath_table", "xpath_table('id', 'doc', 't', '/a', 'true')", BUILDS_SQL),
    ("cursor_to_xml", "cursor_to_xml('c', 1, true, false, '')", CURSOR),
    ("database_to_xml", "database_to_xml(true, false, '')", WHOLE_DATABASE),
    ("schema_to_xml_and_xmlschema", "schema_to_xml_and_xmlschema('public', true, false, '')", WHOLE_DATABASE),
]


def _spellings(function: str, call: str) -> dict[str, str]:
    """The same call written every way PostgreSQL reads as a call of `function`."""
    args = call[len(function):]
    return {"plain": call, "pg_catalog": f"pg_catalog.{call}", "public": f"public.{call}",
            "quoted": f'"{function}"{args}', "quoted_qualified": f'"pg_catalog"."{function}"{args}',
            "upper": f"{function.upper()}{args}", "mixed_case": f"Pg_Catalog.{function.title()}{args}"}


# One of each class, tried in every place.
EVERYWHERE = ["lo_create", "pg_advisory_lock", "pg_notify", "nextval", "setseed", "pg_terminate_backend",
              "pg_logical_emit_message", "pg_stat_reset", "gin_clean_pending_list", "pg_prewarm", "dblink",
              "connectby", "cursor_to_xml", "database_to_xml"]
PLACES = {  # where in a query a call can hide: {} is the call
    "select_list": "SELECT {}",
    "from": "SELECT * FROM {} AS f",
    "cte": "WITH c AS (SELECT {} AS x) SELECT x FROM c",
    "nested_cte": "WITH a AS (SELECT 1), b AS (WITH c AS (SELECT {} AS x) SELECT x FROM c) SELECT * FROM b",
    "subquery": "SELECT * FROM (SELECT {} AS x) s",
    "scalar_subquery": "SELECT (SELECT {})",
    "exists": "SELECT 1 WHERE EXISTS (SELECT {})",
    "lateral": "SELECT * FROM pg_class c, LATERAL (SELECT {} AS x) l",
    "lateral_function": "SELECT * FROM pg_class c CROSS JOIN LATERAL {} AS f",
    "argument": "SELECT coalesce(length({}::text), 0)",
    "cast": "SELECT CAST({} AS text)",
    "operator": "SELECT 1 OPERATOR(pg_catalog.+) ({})::int",
    "where": "SELECT relname FROM pg_class WHERE {} IS NOT NULL",
    "join_on": "SELECT 1 FROM pg_class a JOIN pg_class b ON {} IS NULL",
    "group_by": "SELECT count(*) FROM pg_class GROUP BY {}",
    "having": "SELECT count(*) FROM pg_class HAVING {} IS NULL",
    "order_by": "SELECT relname FROM pg_class ORDER BY {}",
    "window": "SELECT count(*) OVER w FROM pg_class WINDOW w AS (PARTITION BY {})",
    "over": "SELECT rank() OVER (ORDER BY {}) FROM pg_class",
    "filter": "SELECT count(*) FILTER (WHERE {} IS NULL) FROM pg_class",
    "aggregate_order": "SELECT string_agg(relname, ',' ORDER BY {}) FROM pg_class",
    "case": "SELECT CASE WHEN true THEN {} END",
    "values": "VALUES ({})",
    "union": "SELECT 1 UNION ALL SELECT {}",
    "limit": "SELECT 1 LIMIT (SELECT count(*) FROM (SELECT {}) s)",
}


@pytest.mark.parametrize("function, call, why", REFUSED, ids=[r[0] for r in REFUSED])
@pytest.mark.parametrize("spelling", list(_spellings("f", "f()")))
def test_a_call_read_only_does_not_stop_is_refused_however_it_is_spelled(function, call, why, spelling):
    with pytest.raises(NotAQuery) as raised:
        inspect("SELECT " + _spellings(function, call)[spelling])
    assert raised.value.problems == (f"calls {function}(): {why}",)


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("function, call, why", [r for r in REFUSED if r[0] in EVERYWHERE], ids=EVERYWHERE)
def test_a_call_read_only_does_not_stop_is_refused_wherever_it_is(function, call, why, place):
    with pytest.raises(NotAQuery) as raised:
        inspect(PLACES[place].format(call))
    assert raised.value.problems == (f"calls {function}(): {why}",)


def test_attribute_notation_is_a_call_too():
    """PostgreSQL reads x.f as f(x) when x has no column f, whatever x's type: (0::oid).lo_create works."""
    with pytest.raises(NotAQuery) as raised:
        inspect('SELECT (0::oid).lo_create, t.pg_terminate_backend, (c)."PG_NOTIFY", s.x.nextval,'
                " ('SELECT 1'::text).ts_stat FROM pg_class c, pg_class t, (SELECT 's'::regclass AS x) s")
    assert raised.value.problems == (
        f"calls lo_create() (as .lo_create): {LARGE_OBJECT}",
        f"calls pg_terminate_backend() (as .pg_terminate_backend): {SERVER}",
        f"calls pg_notify() (as .PG_NOTIFY): {NOTIFY}",
        f"calls nextval() (as .nextval): {SEQUENCE}",
        "calls ts_stat() (as .ts_stat), which runs the SQL in its argument: only a call written ts_stat('...') with "
        "a string literal can be checked")
    assert inspect("SELECT (0.1::float8).pg_sleep").side_effect_calls == ("pg_sleep",)


def test_every_refused_call_is_named_once_in_order_of_appearance():
    with pytest.raises(NotAQuery) as raised:
        inspect("SELECT pg_advisory_lock(1), dblink_exec('x', 'y'), public.lo_unlink(2), pg_notify('c', ''),"
                " set_config('a.b', 'c', false), pg_terminate_backend(1), pg_advisory_lock(2)"
                " FROM dblink('x', 'SELECT 1') AS d(a int)")
    assert raised.value.problems == (
        f"calls pg_advisory_lock(): {ADVISORY_LOCK}", f"calls dblink_exec(): {OTHER_SERVER}",
        f"calls lo_unlink(): {LARGE_OBJECT}", f"calls pg_notify(): {NOTIFY}", f"calls set_config() {SETTING}",
        f"calls pg_terminate_backend(): {SERVER}", f"calls dblink(): {OTHER_SERVER}")
    assert str(raised.value) == "; ".join(raised.value.problems)


@pytest.mark.parametrize("call", [
    "set_config('search_path', 'evil', false)", "set_config('work_mem', '1GB', 'off')",
    "set_config('work_mem', '1GB', is_local => false)", "set_config('work_mem', '1GB', c.relname = 'x')",
    "pg_catalog.SET_CONFIG('work_mem', '1GB', NULL)", "set_config('work_mem', '1GB', (SELECT true))",
])
def test_a_session_level_set_config_is_refused(call):
    with pytest.raises(NotAQuery) as raised:
        inspect(f"SELECT {call} FROM pg_class c")
    assert raised.value.problems == (f"calls set_config() {SETTING}",)


# -- functions that run a SQL string: a literal, checked in turn, or refused -------------------------------------

@pytest.mark.parametrize("sql, problem", [
    ("SELECT query_to_xml('SELECT pg_advisory_lock(1)', true, false, '')",
     f"calls pg_advisory_lock() in the SQL string of query_to_xml(): {ADVISORY_LOCK}"),
    ("SELECT * FROM ts_stat(E'SELECT to_tsvector(pg_terminate_backend(pid)::text) FROM pg_stat_activity')",
     f"calls pg_terminate_backend() in the SQL string of ts_stat(): {SERVER}"),
    ("SELECT query_to_xmlschema($$SELECT lo_create(0)$$, true, false, '')",
     f"calls lo_create() in the SQL string of query_to_xmlschema(): {LARGE_OBJECT}"),
    ("SELECT query_to_xml_and_xmlschema(U&'SELECT \\006Co_create(0)', true, false, '')",
     f"calls lo_create() in the SQL string of query_to_xml_and_xmlschema(): {LARGE_OBJECT}"),
    ("SELECT query_to_xml('SELECT pg_' || 'notify(''c'', ''x'')', true, false, '')",
     f"calls pg_notify() in the SQL string of query_to_xml(): {NOTIFY}"),
    ("SELECT query_to_xml(query => 'SELECT nextval(''s'')', nulls => true, tableforest => false, targetns => '')",
     f"calls nextval() in the SQL string of query_to_xml(): {SEQUENCE}"),
    ("SELECT ts_rewrite('a'::tsquery, 'SELECT pg_catalog.\"pg_advisory_lock\"(1)::text::tsquery, ''b''::tsquery')",
     f"calls pg_advisory_lock() in the SQL string of ts_rewrite(): {ADVISORY_LOCK}"),
    ("SELECT * FROM crosstab('SELECT 1, 2, 3', 'SELECT setval(''s'', 1)') AS c(a int, b int)",
     f"calls setval() in the SQL string of crosstab(): {SEQUENCE}"),
    ("SELECT query_to_xml('SELECT 1; SELECT pg_advisory_lock(1)', true, false, '')",
     "calls query_to_xml() with SQL that is not one read-only query: expected exactly one statement, got 2"),
    ("SELECT query_to_xml('WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d', true, false, '')",
     "calls query_to_xml() with SQL that is not one read-only query: a data-modifying WITH (DELETE); "
     "a query may only read"),
    ("SELECT query_to_xml('DELETE FROM t RETURNING 1', true, false, '')",
     "calls query_to_xml() with SQL that is not one read-only query: expected a SELECT, WITH, VALUES or TABLE "
     "query, got a DELETE statement"),
    ("SELECT query_to_xml('SELECT set_config(''work_mem'', ''1GB'', false)', true, false, '')",
     f"calls set_config() in the SQL string of query_to_xml() {SETTING}"),
    # depth 2: a literal inside a literal
    ("SELECT query_to_xml('SELECT query_to_xml(''SELECT pg_advisory_lock(1)'', true, false, '''')', true, false, '')",
     f"calls pg_advisory_lock() in the SQL string of query_to_xml() in the SQL string of query_to_xml(): "
     f"{ADVISORY_LOCK}"),
    ("WITH c AS (SELECT * FROM ts_stat($a$SELECT to_tsvector(x::text) FROM query_to_xml($b$SELECT \"LO_CREATE\"(0)$b$,"
     " true, false, '') x$a$)) SELECT * FROM c",
     f"calls lo_create() in the SQL string of query_to_xml() in the SQL string of ts_stat(): {LARGE_OBJECT}"),
    ("SELECT * FROM pg_class c, LATERAL (SELECT query_to_xml('SELECT query_to_xml(''SELECT 1; SELECT 2'', true, "
     "false, '''')', true, false, '')) l",
     "calls query_to_xml() in the SQL string of query_to_xml() with SQL that is not one read-only query: "
     "expected exactly one statement, got 2"),
    ("SELECT query_to_xml('SELECT query_to_xml(relname, true, false, '''') FROM pg_class', true, false, '')",
     "calls query_to_xml() in the SQL string of query_to_xml(), which runs the SQL in its first argument: "
     "only a string literal can be checked, got a column"),
])
def test_a_sql_string_is_checked_like_the_query(sql, problem):
    with pytest.raises(NotAQuery) as raised:
        inspect(sql)
    assert raised.value.problems == (problem,)


@pytest.mark.parametrize("sql, what", [
    ("SELECT query_to_xml(relname, true, false, '') FROM pg_class", "a column"),
    ("SELECT query_to_xml(format('SELECT %s', 1), true, false, '')", "the result of format()"),
    ("SELECT query_to_xml('SELECT ' || relname, true, false, '') FROM pg_class",
     "a concatenation with something other than a string literal"),
    ("SELECT query_to_xml($1, true, false, '')", "a parameter"),
    ("SELECT query_to_xml((SELECT 'SELECT 1'), true, false, '')", "a subquery"),
    ("SELECT query_to_xml(CASE WHEN true THEN 'SELECT 1' END, true, false, '')", "an expression"),
    ("SELECT query_to_xml(nulls => true, tableforest => false, targetns => '', query => relname) FROM pg_class",
     "a column"),
    ("SELECT query_to_xml(1, true, false, '')", "a constant that is not a string"),
])
def test_a_sql_string_that_is_not_a_literal_is_refused(sql, what):
    with pytest.raises(NotAQuery) as raised:
        inspect(sql)
    assert raised.value.problems == (f"calls query_to_xml(), which runs the SQL in its first argument: only a string "
                                     f"literal can be checked, got {what}",)


@pytest.mark.parametrize("sql, problem", [
    ("SELECT * FROM ts_stat(current_query())", "calls ts_stat(), which runs the SQL in its first argument: only a "
                                               "string literal can be checked, got the result of current_query()"),
    ("SELECT ts_rewrite('a'::tsquery, relname) FROM pg_class", "calls ts_rewrite(), which runs the SQL in its second "
                                                               "argument: only a string literal can be checked, got a "
                                                               "column"),
    ("SELECT * FROM crosstab('SELECT 1, 2, 3', relname) AS c(a int, b int), pg_class",
     "calls crosstab(), which runs the SQL in its second argument: only a string literal can be checked, got a column"),
    ("SELECT table_to_xml(c.oid, true, false, '') FROM pg_class c",
     "calls table_to_xml(), which reads the relation named by its first argument: only a literal name can be "
     "checked, got a column"),
])
def test_every_function_running_sql_needs_its_literal(sql, problem):
    with pytest.raises(NotAQuery) as raised:
        inspect(sql)
    assert raised.value.problems == (problem,)


def _nested(depth: int, inner: str) -> str:
    sql = inner
    for _ in range(depth):
        sql = "SELECT query_to_xml('" + sql.replace("'", "''") + "', true, false, '')"
    return sql


def test_sql_strings_nest_up_to_the_bound_and_no_further():
    assert inspect(_nested(MAX_NESTING, "SELECT 1")).side_effect_calls == ()
    with pytest.raises(NotAQuery) as raised:
        inspect(_nested(MAX_NESTING, "SELECT lo_create(0)"))
    assert raised.value.problems == (
        "calls lo_create()" + " in the SQL string of query_to_xml()" * MAX_NESTING + f": {LARGE_OBJECT}",)
    with pytest.raises(NotAQuery) as raised:
        inspect(_nested(MAX_NESTING + 1, "SELECT 1"))
    assert raised.value.problems == ("calls query_to_xml()" + " in the SQL string of query_to_xml()" * MAX_NESTING
                                     + f" with SQL strings nested more than {MAX_NESTING} deep",)
    with pytest.raises(NotAQuery):  # quote doubling grows the text exponentially: refused, not slow
        inspect(_nested(12, "SELECT 1"))


def test_a_deep_expression_is_walked_without_recursion():
    with pytest.raises(NotAQuery) as raised:
        inspect("SELECT " + "abs(" * 2000 + "lo_create(0)" + ")" * 2000)
    assert raised.value.problems == (f"calls lo_create(): {LARGE_OBJECT}",)
    with pytest.raises(NotAQuery) as raised:
        inspect("SELECT " + "(" * 20000 + "1" + ")" * 20000)
    assert str(raised.value).startswith("not valid SQL: ")


# -- the calls a query may opt in to --------------------------------------------------------------------------

def test_opt_in_calls_pass_the_grammar_and_are_named_in_order():
    shape = inspect("SELECT pg_sleep(0), pg_catalog.TXID_CURRENT(), \"pg_read_file\"('x'), pg_current_xact_id(),"
                    " query_to_xml('SELECT pg_sleep_for(''1s''), pg_stat_file(''x'')', true, false, ''), pg_sleep(1)")
    assert shape.side_effect_calls == ("pg_sleep", "txid_current", "pg_read_file", "pg_current_xact_id",
                                       "pg_sleep_for", "pg_stat_file")
    assert set(OPT_IN) == {"pg_sleep", "pg_sleep_for", "pg_sleep_until", "txid_current", "pg_current_xact_id",
                           "pg_read_file", "pg_read_binary_file", "pg_read_file_old", "pg_stat_file", "pg_ls_dir"}


def _errors(queries: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config("collectors: []\ntargets:\n  db: {dsn: x}\nqueries:\n" + queries, source="c.yaml")
    return raised.value.errors


def test_check_locates_each_refused_call_naming_the_query():
    assert _errors("""\
  - name: ok
    sql: SELECT 1 AS n
    metrics: {n: {}}
  - name: evil
    sql: |
      SELECT 1 AS n FROM (SELECT pg_catalog."lo_create"(0), PG_NOTIFY('c', 'x'),
        query_to_xml('SELECT pg_advisory_lock(1)', true, false, '')) s
    metrics: {n: {}}
  - name: picky
    sql: SELECT 1 AS n WHERE 1 = ANY({{picked}})
    pick: {sql: "SELECT pid FROM pg_stat_activity, LATERAL (SELECT pg_terminate_backend(pid)) t"}
    metrics: {n: {}}
""") == [
        f"c.yaml:9: queries[1].sql: query 'evil' calls lo_create(): {LARGE_OBJECT}",
        f"c.yaml:9: queries[1].sql: query 'evil' calls pg_notify(): {NOTIFY}",
        f"c.yaml:9: queries[1].sql: query 'evil' calls pg_advisory_lock() in the SQL string of query_to_xml(): "
        f"{ADVISORY_LOCK}",
        f"c.yaml:15: queries[2].pick.sql: query 'picky' calls pg_terminate_backend(): {SERVER}",
    ]


def test_check_refuses_an_opt_in_call_the_query_does_not_allow():
    assert _errors("""\
  - name: nap
    sql: SELECT 1 AS n FROM pg_sleep(0.1), LATERAL (SELECT txid_current()) x
    allow_calls: [PG_SLEEP]
    metrics: {n: {}}
  - name: bad_allow
    sql: SELECT 1 AS n
    allow_calls: [lo_create, pg_sleep_forever, 3]
    metrics: {n: {}}
""") == [
        "c.yaml:6: queries[0].sql: query 'nap' calls txid_current(): assigns a transaction id even in a read-only "
        "transaction: one xid per run, toward wraparound; if that is intended, add `allow_calls: [txid_current]` to "
        "the query",
        "c.yaml:11: queries[1].allow_calls[2]: expected a string, got the number 3",
        f"c.yaml:11: queries[1].allow_calls[0]: lo_create() cannot be allowed: {LARGE_OBJECT}",
        "c.yaml:11: queries[1].allow_calls[1]: expected one of " + ", ".join(OPT_IN) + " (the calls a query may "
        "allow), got the string 'pg_sleep_forever'",
    ]


def test_an_allowed_call_passes_and_an_unused_allowance_is_a_warning():
    config = parse_config("""\
collectors: []
targets:
  db: {dsn: x}
queries:
  - name: nap
    sql: SELECT 1 AS n FROM pg_sleep(0.1), query_to_xml('SELECT txid_current()', true, false, '')
    allow_calls: [pg_sleep, txid_current, pg_read_file]
    metrics: {n: {}}
""", source="c.yaml")
    assert [q.name for q in config.queries] == ["nap"]
    assert config.warnings == ("c.yaml:7: queries[0].allow_calls[2]: the query does not call pg_read_file()",)


# -- on a real server: the attacks do what docs/security.md says, and pgvigil refuses them ----------------------

ATTACKS = {  # name: (SQL, the error pgvigil check reports)
    "large_object": ("SELECT lo_create(0) AS n", f"calls lo_create(): {LARGE_OBJECT}"),
    "large_object_from_bytea": ("SELECT lo_from_bytea(0, 'pwned') AS n", f"calls lo_from_bytea(): {LARGE_OBJECT}"),
    "large_object_as_attribute": ("SELECT (0::oid).lo_create AS n",
                                  f"calls lo_create() (as .lo_create): {LARGE_OBJECT}"),
    "lock_in_a_string": ("SELECT 1 AS n FROM query_to_xml('SELECT pg_advisory_lock(4242)', true, false, '')",
                         f"calls pg_advisory_lock() in the SQL string of query_to_xml(): {ADVISORY_LOCK}"),
    "terminate_in_a_string": ("SELECT 1 AS n FROM query_to_xml('SELECT pg_terminate_backend({victim})', true, false,"
                              " '')", f"calls pg_terminate_backend() in the SQL string of query_to_xml(): {SERVER}"),
    "notify": ("SELECT 1 AS n FROM pg_notify('pgvigil_attack', 'pwned')", f"calls pg_notify(): {NOTIFY}"),
    "session_setting": ("SELECT 1 AS n FROM set_config('work_mem', '77MB', false)", f"calls set_config() {SETTING}"),
    "wal_message": ("SELECT 1 AS n FROM pg_logical_emit_message(false, 'pgvigil', 'pwned')",
                    f"calls pg_logical_emit_message(): {REPLICATION}"),
}


@pytest.fixture
def monitor(cluster, fresh_db):
    """A login role that is a member of pg_monitor and nothing else."""
    role = "mon_" + uuid.uuid4().hex[:8]
    dbname = fresh_db.rsplit("/", 1)[1]
    cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}")
    yield role
    cluster.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
    cluster.execute(f"DROP OWNED BY {role}", dbname)  # its large objects
    cluster.execute(f"DROP ROLE {role}")


def _read_only(dsn: str, sql: str) -> psycopg.Connection:
    """Runs `sql` in a read-only transaction and commits, as pgvigil does; returns the open connection."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f"BEGIN READ ONLY; {sql}; COMMIT")
    return conn


def test_the_attacks_do_what_the_docs_say_on_a_real_server(cluster, fresh_db, monitor, tmp_path):
    """On the machine's server (Debian's PostgreSQL 15 in CI), as a role with pg_monitor and nothing else."""
    from exporter.scrape.assembly import scrape_once

    dbname = fresh_db.rsplit("/", 1)[1]
    dsn = cluster.dsn(dbname, user=monitor)

    def large_objects() -> int:
        return cluster.execute(f"SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner = '{monitor}'::regrole",
                               dbname)[0][0]

    # large objects: created and committed by a read-only transaction, also through attribute notation
    for attack in ("large_object", "large_object_from_bytea", "large_object_as_attribute"):
        _read_only(dsn, ATTACKS[attack][0]).close()
    assert large_objects() == 3
    assert cluster.execute("SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata"
                           f" WHERE lomowner = '{monitor}'::regrole AND lo_get(oid) <> ''", dbname) == [("pwned",)]
    # an advisory lock taken by SQL in a string outlives the transaction: held while the session idles
    holder = _read_only(dsn, ATTACKS["lock_in_a_string"][0])
    pid = holder.info.backend_pid
    assert cluster.execute("SELECT a.state, l.granted FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                           f" WHERE l.locktype = 'advisory' AND l.objid = 4242 AND l.pid = {pid}") == [("idle", True)]
    # ... and another monitoring session (same role, no other privilege) is ended by SQL in a string
    _read_only(dsn, ATTACKS["terminate_in_a_string"][0].format(victim=pid)).close()
    wait_until(lambda: cluster.execute(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == [(0,)], 10,
               "the terminated session to end")
    with pytest.raises(psycopg.OperationalError):
        holder.execute("SELECT 1")
    holder.close()
    # a notification reaches its listener
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as listener:
        listener.execute("LISTEN pgvigil_attack")
        _read_only(dsn, ATTACKS["notify"][0]).close()
        assert [n.payload for n in listener.notifies(timeout=10, stop_after=1)] == ["pwned"]
    # a session-level setting outlives the transaction, for the next query on the connection
    with _read_only(dsn, ATTACKS["session_setting"][0]) as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("77MB",)
    # a WAL record is written at once: past where the WAL ended when the read-only transaction began
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("BEGIN READ ONLY")
        (before,) = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        (written,) = conn.execute("SELECT pg_logical_emit_message(false, 'pgvigil', 'pwned') - %s::pg_lsn",
                                  (before,)).fetchone()
        conn.execute("COMMIT")
    assert written > 0

    # pgvigil check refuses every one of them, located and named
    path = tmp_path / "attacks.yaml"
    queries = "".join(f"  - name: {name}\n    sql: \"{sql.format(victim=1)}\"\n    metrics: {{n: {{}}}}\n"
                      for name, (sql, _) in ATTACKS.items())
    path.write_text(f"collectors: []\ntargets:\n  db:\n    dsn: {dsn}\nqueries:\n{queries}")
    done = subprocess.run([sys.executable, "-m", "exporter", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout
    assert [line.strip() for line in done.stderr.splitlines()[1:]] == [
        f"{path}:{7 + 3 * i}: queries[{i}].sql: query '{name}' {problem}"
        for i, (name, (_, problem)) in enumerate(ATTACKS.items())]

    # and the session refuses them when a query is forced past the check: nothing reaches the server
    config = config_for(dsn, "  - {name: attack, sql: 'SELECT 1 AS n', metrics: {n: {}}}\n")
    for sql, _ in ATTACKS.values():
        query = dataclasses.replace(config.queries[0], sql=sql.format(victim=1))
        forced = dataclasses.replace(config, queries=(query,))
        samples = parse_exposition(scrape_once(forced))
        assert sample(samples, "pgvigil_query_errors_total", query="attack", reason="error") == 1
        assert sample(samples, "attack_n") is None
    assert large_objects() == 3
    assert cluster.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242") == [(0,)]
