"""What a query's SQL is, decided by PostgreSQL's own grammar (libpq_query through pglast).

A query must be exactly one statement, and that statement must only read: a SELECT (VALUES,
TABLE and set operations are SELECTs too) with no data-modifying WITH, no INTO and no row
locks. Text matching cannot decide this (a bracket in a string, a comment, a second statement
smuggled behind a closing parenthesis); the server's parser can, so a second statement is
impossible, whatever the text looks like.

Reading is not the same as having no effect: a read-only transaction does not stop large
objects, advisory locks, notifications, sequences, signals to other sessions, session settings,
or functions that run SQL given as a string (docs/security.md lists them all, checked against
PostgreSQL 15's pg_proc). A call of one of those, found anywhere in the statement (subqueries,
CTEs, LATERAL, arguments, ORDER BY, windows) by its name however written (schema-qualified,
quoted, any case), makes the SQL `NotAQuery`, with the function and why. The SQL string of a
function that runs one (query_to_xml, ts_stat ...) must be a literal, which is checked in turn
with all of the above, to MAX_NESTING levels. A few calls are harmless enough for a query to
opt in to (`OPT_IN`: sleeping, assigning a transaction id, reading server files): those are not
refused here but returned in `Shape.side_effect_calls`, and `pgvigil check` refuses the ones a
query does not list in its `allow_calls`.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterator

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError

# How many SQL strings deep (query_to_xml('SELECT ... ts_stat(''...'')')) a query may go.
MAX_NESTING = 4

_LARGE_OBJECT = ("large objects: a read-only transaction does not stop creating, writing or removing them "
                 "(lo_import and lo_export also read and write the server's files)")
_ADVISORY_LOCK = ("advisory locks: a read-only transaction does not stop them; a session-level lock outlives the "
                  "query, a transaction-level one blocks other sessions while the query runs")
_NOTIFY = "notifies the channel's listeners when the transaction commits, read-only or not"
_SEQUENCE = ("changes a sequence, which is never rolled back (a read-only transaction refuses it for permanent "
             "sequences only)")
_SESSION = "changes the session's state: later queries on the same connection run with it"
_SETTING = ("with is_local not true: the setting lasts the session, so later queries on the same connection run "
            "with it (is_local true ends it with the query's transaction)")
_SERVER = ("signals other sessions or acts on the server (configuration, log, WAL, backups, promotion), which a "
           "read-only transaction does not stop")
_REPLICATION = "acts on replication slots, replication origins or the WAL, which a read-only transaction does not stop"
_RESET = "resets statistics everyone else reads, which a read-only transaction does not stop"
_WRITES = "writes indexes, the catalog or files, which a read-only transaction does not stop"
_CACHE = "loads or evicts shared buffers (or starts a worker that does), pushing out what the server needs cached"
_OTHER_SERVER = ("connects to another server: what runs there is not read-only, and a silent host keeps the backend "
                 "waiting past the query's statement_timeout")
_BUILDS_SQL = "builds SQL from its text arguments and runs it, which pgvigil cannot check"
_CURSOR = "reads a cursor opened elsewhere, whose query pgvigil cannot check"
_WHOLE_DATABASE = "runs a query on every table and view of a schema or database, into one value"

# Functions a read-only transaction does not stop: exact names, then name prefixes, then patterns.
REFUSED: dict[str, str] = {
    **dict.fromkeys(("loread", "lowrite"), _LARGE_OBJECT),
    "pg_notify": _NOTIFY,
    **dict.fromkeys(("nextval", "setval"), _SEQUENCE),
    "setseed": _SESSION,
    **dict.fromkeys((
        "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_promote", "pg_switch_wal",
        "pg_create_restore_point", "pg_log_backend_memory_contexts", "pg_backup_start", "pg_backup_stop",
        "pg_start_backup", "pg_stop_backup", "pg_wal_replay_pause", "pg_wal_replay_resume",
    ), _SERVER),
    **dict.fromkeys((
        "pg_logical_emit_message", "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
        "pg_drop_replication_slot", "pg_replication_slot_advance",
        "pg_log_standby_snapshot", "pg_sync_replication_slots",
    ), _REPLICATION),
    **dict.fromkeys((
        "gin_clean_pending_list", "brin_summarize_new_values", "brin_summarize_range", "brin_desummarize_range",
        "pg_import_system_collations", "pg_nextoid", "pg_stop_making_pinned_objects", "pg_extension_config_dump",
        "heap_force_kill", "heap_force_freeze", "pg_truncate_visibility_map",
        "pg_restore_relation_stats", "pg_restore_attribute_stats", "pg_clear_relation_stats",
        "pg_clear_attribute_stats", "pg_set_relation_stats", "pg_set_attribute_stats",
    ), _WRITES),
    "pg_prewarm": _CACHE,
    **dict.fromkeys(("postgres_fdw_disconnect", "postgres_fdw_disconnect_all"), _SESSION),
    **dict.fromkeys(("connectby", "xpath_table"), _BUILDS_SQL),
    **dict.fromkeys(("cursor_to_xml", "cursor_to_xmlschema"), _CURSOR),
    **dict.fromkeys(("schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml",
                     "database_to_xmlschema", "database_to_xml_and_xmlschema"), _WHOLE_DATABASE),
}
REFUSED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("lo_", _LARGE_OBJECT), ("pg_advisory_", _ADVISORY_LOCK), ("pg_try_advisory_", _ADVISORY_LOCK),
    ("dblink", _OTHER_SERVER), ("pg_rotate_logfile", _SERVER), ("pg_create_", _SERVER),
    ("pg_copy_", _REPLICATION), ("pg_logical_slot_", _REPLICATION), ("pg_replication_origin_", _REPLICATION),
    ("pg_stat_reset", _RESET), ("pg_file_", _WRITES), ("binary_upgrade_", _WRITES),
    ("autoprewarm_", _CACHE), ("pg_buffercache_evict", _CACHE),
)
_RESET_PATTERN = re.compile(r"pg_\w*_reset")  # pg_stat_statements_reset, pg_qualstats_reset ...
# The large-object functions by name: `x.lo_...` is a column as often as a call (a setting pivoted into
# columns, lo_compat_privileges), so attribute notation counts these only.
_LARGE_OBJECT_FUNCTIONS = frozenset({
    "lo_close", "lo_creat", "lo_create", "lo_export", "lo_from_bytea", "lo_get", "lo_import", "lo_lseek",
    "lo_lseek64", "lo_open", "lo_put", "lo_tell", "lo_tell64", "lo_truncate", "lo_truncate64", "lo_unlink",
})

# Calls a query may make when it lists them in `allow_calls`: bounded, or reads only.
_SLEEP = "sleeps, holding a connection and the scrape until its statement_timeout"
_XID = "assigns a transaction id even in a read-only transaction: one xid per run, toward wraparound"
_FILES = "reads the server's files (needs privileges pg_monitor does not have)"
OPT_IN: dict[str, str] = {
    **dict.fromkeys(("pg_sleep", "pg_sleep_for", "pg_sleep_until"), _SLEEP),
    **dict.fromkeys(("txid_current", "pg_current_xact_id"), _XID),
    **dict.fromkeys(("pg_read_file", "pg_read_binary_file", "pg_read_file_old", "pg_stat_file", "pg_ls_dir"), _FILES),
}

# Functions that run SQL given as a string: the argument (position, name) holding it.
_RUNS_A_STRING: dict[str, tuple[int, str | None]] = {
    **dict.fromkeys(("query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat"), (0, "query")),
    **dict.fromkeys(("crosstab", "crosstab2", "crosstab3", "crosstab4"), (0, None)),
}
# Functions that read a relation named by their first argument: a literal name is as good as FROM.
_READS_NAMED_RELATION = frozenset({"table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema"})
_TRUE = frozenset({"t", "true", "on", "yes", "y", "1"})
_DATA_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt) + ((ast.MergeStmt,) if hasattr(ast, "MergeStmt")
                                                                   else ())
_ORDINALS = ("first", "second", "third", "fourth", "fifth")


class NotAQuery(Exception):
    """The SQL is not exactly one read-only query; `problems` say why, one each (str() joins them)."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems: tuple[str, ...] = problems

    def __str__(self) -> str:
        return "; ".join(self.problems)


@dataclass(frozen=True)
class Shape:
    """What the SQL does beyond reading: the calls of `OPT_IN` functions it makes, in order of appearance
    (those in the SQL strings it runs included)."""

    side_effect_calls: tuple[str, ...]


@functools.lru_cache(maxsize=4096)  # the session checks every run's SQL: the same texts again and again
def inspect(sql: str) -> Shape:
    """The shape of a query's SQL; raises NotAQuery unless it is exactly one read-only query that
    calls no function whose effects a read-only transaction does not stop (but `OPT_IN` ones).

    `sql` is what is sent: placeholders such as {{previous_run}} already replaced."""
    problems, calls = _lint(sql, 0)
    if problems:
        raise NotAQuery(*(call + rest for call, rest in problems))
    return Shape(side_effect_calls=tuple(dict.fromkeys(calls)))


def refusal(name: str) -> str | None:
    """Why a call of function `name` (unqualified, any case) is refused, or None."""
    name = name.lower()
    if name in REFUSED:
        return REFUSED[name]
    for prefix, why in REFUSED_PREFIXES:
        if name.startswith(prefix):
            return why
    return _RESET if _RESET_PATTERN.match(name) else None


def is_side_effect_function(name: str) -> bool:
    """A function whose effects a read-only transaction does not stop: refused, or allowed by opt-in."""
    return refusal(name) is not None or name.lower() in OPT_IN or name.lower() == "set_config"


_Problem = tuple[str, str]  # ("calls f()" and where it is, or "" for the statement itself; the rest)


def _lint(sql: str, depth: int) -> tuple[list[_Problem], list[str]]:
    """The problems of `sql` (none when it is one read-only query) and the OPT_IN calls it makes."""
    if "\x00" in sql:  # the parser would stop reading there, the driver refuses to send it at all
        return [("", "contains a NUL character")], []
    try:
        statements = parse_sql(sql)
    except ParseError as exc:
        return [("", f"not valid SQL: {exc}")], []
    except RecursionError:
        return [("", "not valid SQL: nested too deeply")], []
    if len(statements) != 1:
        return [("", f"expected exactly one statement, got {len(statements)}")], []
    statement = statements[0].stmt
    if not isinstance(statement, ast.SelectStmt):
        text = sql[statements[0].stmt_location or 0:]
        kind = _verb(statement) if isinstance(statement, _DATA_WRITES) else text.split()[0].upper()
        return [("", f"expected a SELECT, WITH, VALUES or TABLE query, got {_a(kind)} statement")], []
    finder = _Finder(depth)
    finder.walk(statement)
    problems = [problem for _, problem in sorted(finder.problems, key=lambda found: found[0])]
    return list(dict.fromkeys(problems)), [name for _, name in sorted(finder.calls, key=lambda found: found[0])]


def _verb(node: Any) -> str:
    return type(node).__name__[:-len("Stmt")].upper()


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'AEIOU' else 'a'} {word}"


def _nodes(root: ast.Node) -> Iterator[ast.Node]:
    """Every node under `root`, itself included, without recursion (a deep expression is fine)."""
    todo: list[Any] = [root]
    while todo:
        value = todo.pop()
        if isinstance(value, ast.Node):
            yield value
            todo.extend(getattr(value, member) for member in value)
        elif isinstance(value, tuple):
            todo.extend(value)


class _Finder:
    """Walks one statement: why it is not read-only, and the calls it makes, each with its location."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.problems: list[tuple[int, _Problem]] = []
        self.calls: list[tuple[int, str]] = []

    def walk(self, statement: ast.Node) -> None:
        for node in _nodes(statement):
            where = getattr(node.arg if isinstance(node, ast.A_Indirection) else node, "location", None) or 0
            problem = _write_problem(node)
            if problem:
                self.problems.append((where, ("", problem)))
            elif isinstance(node, ast.FuncCall):
                self.call(node, where)
            elif isinstance(node, (ast.ColumnRef, ast.A_Indirection)):
                self.attribute(node, where)

    def call(self, node: ast.FuncCall, where: int) -> None:
        name = _name(node)
        why = refusal(name)
        if why is not None:
            self.problems.append((where, (f"calls {name}()", f": {why}")))
        elif name in OPT_IN:
            self.calls.append((where, name))
        elif name == "set_config" and not _is_true(_argument(node, 2, "is_local")):
            self.problems.append((where, (f"calls {name}()", f" {_SETTING}")))
        elif name in _RUNS_A_STRING or (name == "ts_rewrite" and len(node.args or ()) == 2):
            self.runs_a_string(node, name, where)
        elif name in _READS_NAMED_RELATION:
            argument = _argument(node, 0, "tbl")
            if _literal(argument) is None:
                self.problems.append((where, (f"calls {name}()", ", which reads the relation named by its first "
                                              f"argument: only a literal name can be checked, got {_what(argument)}")))

    def runs_a_string(self, node: ast.FuncCall, name: str, where: int) -> None:
        position, keyword = _RUNS_A_STRING.get(name, (1, None))
        positions = [position]
        args = node.args or ()
        if name == "crosstab" and len(args) == 2 and not _is_integer(args[1]):
            positions.append(1)  # crosstab(source_sql, category_sql); crosstab(text, integer) has one
        for position in positions:
            argument = _argument(node, position, keyword)
            sql = _literal(argument)
            if isinstance(argument, ast.A_Const) and argument.isnull:
                continue  # runs nothing: the function returns NULL
            if sql is None:
                self.problems.append((where, (f"calls {name}()", f", which runs the SQL in its {_ORDINALS[position]}"
                                              " argument: only a string literal can be checked, got "
                                              f"{_what(argument)}")))
            elif self.depth + 1 > MAX_NESTING:
                self.problems.append((where, (f"calls {name}()", f" with SQL strings nested more than {MAX_NESTING} "
                                                                 "deep")))
            else:
                problems, calls = _lint(sql, self.depth + 1)
                for call, rest in problems:
                    self.problems.append((where, (f"{call} in the SQL string of {name}()", rest) if call else
                                          (f"calls {name}()", f" with SQL that is not one read-only query: {rest}")))
                self.calls += [(where, call) for call in calls]

    def attribute(self, node: ast.ColumnRef | ast.A_Indirection, where: int) -> None:
        """`x.f` is f(x) when x has no column f, whatever x's type: `(0::oid).lo_create` creates a large
        object, `('SELECT ...'::text).ts_stat` runs SQL. Attribute notation calls a function too."""
        fields = (node.fields or ())[1:] if isinstance(node, ast.ColumnRef) else node.indirection
        for field in fields or ():
            if not isinstance(field, ast.String) or not field.sval:
                continue
            name, call = field.sval.lower(), f"calls {field.sval.lower()}() (as .{field.sval})"
            why = None if name.startswith("lo_") and name not in _LARGE_OBJECT_FUNCTIONS else refusal(name)
            if why is not None:
                self.problems.append((where, (call, f": {why}")))
            elif name in OPT_IN:
                self.calls.append((where, name))
            elif name in _RUNS_A_STRING:
                self.problems.append((where, (call, ", which runs the SQL in its argument: only a call written "
                                                    f"{name}('...') with a string literal can be checked")))


def _name(node: ast.FuncCall) -> str:
    """The function's name without its schema, as PostgreSQL folds it (and any case: "LO_CREATE" too)."""
    return ((node.funcname or ())[-1].sval or "").lower()


def _argument(node: ast.FuncCall, position: int, keyword: str | None) -> Any:
    """The argument at `position`, or passed as `keyword => ...`; None when absent."""
    args = node.args or ()
    for arg in args:
        if isinstance(arg, ast.NamedArgExpr) and keyword is not None and (arg.name or "").lower() == keyword:
            return arg.arg
    positional = [arg for arg in args if not isinstance(arg, ast.NamedArgExpr)]
    if position < len(positional):
        return positional[position]
    return None if len(positional) == len(args) else _NAMED_ELSEWHERE


_NAMED_ELSEWHERE = object()  # the argument was passed by a name this check does not know


def _literal(node: Any) -> str | None:
    """The text of a string literal ('...', E'...', $$...$$, U&'...', cast or collated, or literals
    joined with ||), '' for NULL; None for anything else."""
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return ""
        return node.val.sval if isinstance(node.val, ast.String) else None
    if isinstance(node, (ast.TypeCast, ast.CollateClause)):
        return _literal(node.arg)
    if (isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP and node.name
            and node.name[-1].sval == "||" and node.lexpr is not None):
        left, right = _literal(node.lexpr), _literal(node.rexpr)
        return None if left is None or right is None else left + right
    return None


def _is_true(node: Any) -> bool:
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Boolean):
        return bool(node.val.boolval)
    text = _literal(node)
    return text is not None and text.strip().lower() in _TRUE


def _is_integer(node: Any) -> bool:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    return isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer)


def _what(node: Any) -> str:
    if node is None:
        return "no such argument"
    if node is _NAMED_ELSEWHERE:
        return "an argument passed by name"
    if isinstance(node, ast.ColumnRef):
        return "a column"
    if isinstance(node, ast.FuncCall):
        return f"the result of {_name(node)}()"
    if isinstance(node, ast.ParamRef):
        return "a parameter"
    if isinstance(node, ast.SubLink):
        return "a subquery"
    if isinstance(node, ast.A_Expr) and node.name and node.name[-1].sval == "||":
        return "a concatenation with something other than a string literal"
    if isinstance(node, ast.A_Const):
        return "a constant that is not a string"
    return "an expression"


def _write_problem(node: Any) -> str | None:
    if isinstance(node, _DATA_WRITES):
        return f"a data-modifying WITH ({_verb(node)}); a query may only read"
    if isinstance(node, ast.SelectStmt):
        if node.intoClause is not None:
            return "SELECT ... INTO creates a table; a query may only read"
        if node.lockingClause:
            return "FOR UPDATE/SHARE locks rows; a query may only read"
    return None
