"""What a query's SQL is, decided by PostgreSQL's own grammar (libpq_query through pglast).

A query must be exactly one statement, and that statement must only read: a SELECT (VALUES,
TABLE and set operations are SELECTs too) with no data-modifying WITH, no INTO and no row
locks. Text matching cannot decide this (a bracket in a string, a comment, a second statement
smuggled behind a closing parenthesis); the server's parser can, so a second statement is
impossible, whatever the text looks like.

Reading is not the same as having no effect: some functions act outside the transaction
(signals, notifications, advisory locks, dblink). `side_effect_calls` names the calls of
those, which `pgvigil check` reports as warnings; docs/security.md says what read-only cannot stop.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor

# Functions whose effects a read-only transaction does not stop (exact names, then name prefixes).
SIDE_EFFECT_FUNCTIONS = frozenset({
    "pg_terminate_backend", "pg_cancel_backend", "pg_logical_emit_message", "txid_current",
    "txid_current_if_assigned", "pg_current_xact_id", "pg_current_xact_id_if_assigned", "pg_notify",
    "set_config", "pg_reload_conf", "pg_rotate_logfile", "pg_switch_wal", "pg_create_restore_point",
    "pg_stat_reset", "pg_stat_reset_shared", "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters", "pg_stat_reset_slru", "pg_stat_reset_replication_slot",
    "pg_stat_statements_reset", "pg_sleep", "pg_sleep_for", "pg_sleep_until",
})
SIDE_EFFECT_PREFIXES = ("dblink", "pg_advisory_", "pg_try_advisory_", "lo_", "pg_create_", "pg_drop_replication_slot",
                        "pg_replication_origin_", "pg_file_", "pg_read_")
_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt) + ((ast.MergeStmt,) if hasattr(ast, "MergeStmt") else ())


class NotAQuery(Exception):
    """The SQL is not exactly one read-only query; the message says why."""


@dataclass(frozen=True)
class Shape:
    """What the SQL does beyond reading: the side-effect functions it calls, in order of appearance."""

    side_effect_calls: tuple[str, ...]


@functools.lru_cache(maxsize=4096)  # the session checks every run's SQL: the same texts again and again
def inspect(sql: str) -> Shape:
    """The shape of a query's SQL; raises NotAQuery unless it is exactly one read-only query.

    `sql` is what is sent: placeholders such as {{previous_run}} already replaced."""
    if "\x00" in sql:  # the parser would stop reading there, the driver refuses to send it at all
        raise NotAQuery("contains a NUL character")
    try:
        statements = parse_sql(sql)
    except ParseError as exc:
        raise NotAQuery(f"not valid SQL: {exc}") from None
    if len(statements) != 1:
        raise NotAQuery(f"expected exactly one statement, got {len(statements)}")
    statement = statements[0].stmt
    if not isinstance(statement, ast.SelectStmt):
        text = sql[statements[0].stmt_location or 0:]
        kind = _verb(statement) if isinstance(statement, _WRITES) else text.split()[0].upper()
        raise NotAQuery(f"expected a SELECT, WITH, VALUES or TABLE query, got {_a(kind)} statement")
    finder = _Finder()
    finder(statements[0])
    if finder.problem:
        raise NotAQuery(finder.problem)
    return Shape(side_effect_calls=tuple(dict.fromkeys(finder.calls)))


def is_side_effect_function(name: str) -> bool:
    return name in SIDE_EFFECT_FUNCTIONS or name.startswith(SIDE_EFFECT_PREFIXES)


def _verb(node: Any) -> str:
    return type(node).__name__[:-len("Stmt")].upper()


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'AEIOU' else 'a'} {word}"


class _Finder(Visitor):
    """Walks one statement: the first reason it is not read-only, and its side-effect calls."""

    def __init__(self) -> None:
        super().__init__()
        self.problem: str | None = None
        self.calls: list[str] = []

    def visit(self, ancestors: Any, node: Any) -> None:
        if self.problem is None:
            self.problem = _write_problem(node)

    def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> None:  # noqa: N802 (pglast's naming)
        name = (node.funcname or ())[-1].sval.lower()
        if is_side_effect_function(name):
            self.calls.append(name)


def _write_problem(node: Any) -> str | None:
    if isinstance(node, _WRITES):
        return f"a data-modifying WITH ({_verb(node)}); a query may only read"
    if isinstance(node, ast.SelectStmt):
        if node.intoClause is not None:
            return "SELECT ... INTO creates a table; a query may only read"
        if node.lockingClause:
            return "FOR UPDATE/SHARE locks rows; a query may only read"
    return None
