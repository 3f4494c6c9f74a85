"""`pgvigil grants`: the SQL that gives the configured queries what they need, per target.

Each target is scraped once as its configured role; capability.py's probe says which queries
the role cannot run. For each of those, the relations, functions and schemas its SQL names
(PostgreSQL's grammar, pglast) are looked up in the catalog the way the query resolves them
(its search_path), and the ones the role may not use become GRANTs, each object named by the
catalog itself (`format('%I.%I')`, `regprocedure`): never from an error message's text, where
`"audit log"` reads as `audit log` and `"UserSessions"` as another table's name. Also USAGE on
the schema of an extension a configured query requires, when it is hidden from the role. The queries reading other
sessions and statements (pg_stat_activity, pg_stat_statements, replication) run without
errors for any role but see only the role's own rows: pg_read_all_stats is proposed for them.
Nothing broader (no pg_monitor, no superuser) is ever proposed.

A target with `databases:` (discovery) is one report per database a query runs in, each found the
way the exporter finds them and judged by the queries that run there (the DSN's database: the
cluster-wide ones; every database: the per-database ones): schemas, tables and functions are objects
of one database, so each section starts with psql's `\\connect` to its database and the whole output
can be piped to psql. Statements about the role itself (pg_read_all_stats, ALTER ROLE) are printed
once, in the first section that needs them.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace

import pglast
from pglast.visitors import Visitor

from exporter.config import Config, QuerySpec, TargetSpec
from exporter.logs import loggable
from exporter.scrape import waitsampling
from exporter.scrape.capability import SKIP_REASONS, probed_texts
from exporter.scrape.runner import Runner
from exporter.scrape.session import ConnectFailed, PreparedSql, QueryFailed, Session, scope_of
from exporter.scrape.state import TargetState
from exporter.serverlog import grants as log_grants

# Views whose rows of other roles are hidden (NULLs, or no queryid) from a role without pg_read_all_stats.
OTHERS_ROWS = re.compile(r"\b(pg_stat_activity|pg_stat_statements|pg_stat_replication|pg_stat_wal_receiver|"
                         r"pg_stat_subscription|pg_replication_slots)\b")

# pg_stats shows a role only the columns it may SELECT: the tables whose statistics (so whose bloat
# estimates) are hidden, by schema. Granting that access lets the role read the data, so it is only
# described, never proposed as a statement.
STATS_HIDDEN_SQL = (  # pgvigil's own statements resolve names in pg_catalog only (scrape/transaction.py)
    "SELECT format('%I', n.nspname), count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'"
    "   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND NOT has_table_privilege(c.oid, 'SELECT')"
    " GROUP BY n.nspname ORDER BY n.nspname")
STATISTICS_VIEW = re.compile(r"\bpg_stats\b")
HIDDEN_SCHEMAS_NAMED = 10

ROLE_FACTS_SQL = (
    "SELECT current_user::text AS role, current_database()::text AS db,"
    " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,"
    " pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') AS read_all_stats,"
    " ARRAY(SELECT DISTINCT e.extname::text || '.' || n.nspname::text"
    "       FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
    "       WHERE NOT has_schema_privilege(n.oid, 'USAGE')) AS hidden_schemas,"
    # the role's own setting (the session's is pgvigil's, given at connect)
    " EXISTS (SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) AS c(setting)"
    "         WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
    "           AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))"
    "           AND c.setting = 'default_transaction_read_only=on') AS read_only,"
    " EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    "         WHERE c.relkind IN ('r', 'p', 'v', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    "           AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')) AS writes")


@dataclass
class TargetGrants:
    """What one target's role lacks in one database, and the statements that give it."""

    target: str
    role: str = ""
    database: str = ""
    error: str | None = None
    missing: list[str] = field(default_factory=list)  # "query: why", for the report
    statements: list[str] = field(default_factory=list)  # about this database's objects
    role_statements: list[str] = field(default_factory=list)  # about the role itself: valid in every database
    unresolved: list[str] = field(default_factory=list)  # refusals no GRANT lifts
    connect: bool = False  # one of a discovery root's databases: the section starts with \\connect
    notes: list[str] = field(default_factory=list)  # comment lines after the header

    def text(self) -> str:
        head = f"-- target {loggable(self.target)}"
        if self.error is not None:
            where = f", database {loggable(self.database)}" if self.connect and self.database else ""
            return f"{head}{where}: cannot connect: {loggable(self.error)}\n"
        lines = [f"{head} (role {loggable(self.role)}, database {loggable(self.database)})"]
        if self.connect:
            lines.append(psql_connect(self.database))
        # Every comment line through loggable: a name (a schema's, quoted by format('%I')) may hold a newline,
        # which would end the comment and make the rest a statement psql runs, as whoever pipes this to it.
        lines += [f"-- {loggable(note)}" for note in self.notes]
        lines += [f"-- missing today: {loggable(item)}" for item in self.missing] or ["-- missing today: nothing"]
        lines += [f"-- no grant helps: {loggable(item)}" for item in self.unresolved]
        lines += self.statements + self.role_statements or ["-- nothing to grant"]
        return "\n".join(lines) + "\n"


def psql_connect(database: str) -> str:
    """psql's meta-command that connects to `database` on the same server as the same user, whatever its
    name holds (quotes, backslashes, `=`, a newline): a conninfo string quoted for libpq, then for psql, which
    reads the argument as single-quoted text, then drops double quotes as it does an identifier's."""
    conninfo = "dbname='" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    identifier = '"' + conninfo.replace('"', '""') + '"'
    quoted = "".join("\\\\" if c == "\\" else "''" if c == "'" else f"\\{ord(c):03o}" if ord(c) < 32 or c == "\x7f"
                     else c for c in identifier)
    return f"\\connect -reuse-previous=on '{quoted}'"


def target_grants(config: Config, spec: TargetSpec, timeout: float = 30.0) -> list[TargetGrants]:
    """Scrape `spec` once as its role and turn each refusal into the GRANT that lifts it: one report for a
    target, one per database for a discovery root (in the order the exporter visits them)."""
    runner = Runner(_only(config, spec))
    try:
        states = _visited(runner, timeout)
        if spec.discovers:
            root = runner.roots[spec.name]
            if not root.status.success:
                return [TargetGrants(spec.name, error=root.status.error or "cannot list its databases")]
        elif not states:
            return [TargetGrants(spec.name, error="unreachable")]
        reports = []
        for state in states:
            report = TargetGrants(spec.name, database=state.spec.datname or "", connect=spec.discovers)
            reports.append(report)
            if not state.up:
                report.error = state.error or ("unreachable" if state.up is False
                                               else f"not reached within {timeout:g}s")
                continue
            try:
                _fill(report, state, runner)
            except ConnectFailed as exc:
                report.error = str(exc)
            finally:
                if spec.discovers:  # its slot of the connection budget goes to the next database
                    state.sessions[0].close()
        if spec.discovers and reports:
            reports[0].notes += _not_monitored(runner.roots[spec.name].status.skipped)
    finally:
        runner.close()
    _role_statements_once(reports)
    return reports


def _visited(runner: Runner, timeout: float) -> list[TargetState]:
    """The runner's targets once each has been reached (or refused), scraping again until `timeout`."""
    deadline = time.monotonic() + timeout
    runner.scrape(timeout=timeout)
    while True:
        waiting = [name for name, state in runner.targets.items() if state.up is None]
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            return list(runner.targets.values())
        runner.scrape(timeout=left, only=waiting)


def _not_monitored(skipped: dict[str, int]) -> list[str]:
    """A discovery root's databases no query runs in, by why: nothing to grant there, said once."""
    counts = ", ".join(f"{count} {outcome.replace('_', ' ')}" for outcome, count in skipped.items() if count)
    return [f"databases not monitored, so nothing to grant there: {counts}"] if counts else []


def _role_statements_once(reports: list[TargetGrants]) -> None:
    seen: set[str] = set()
    for report in reports:
        report.role_statements = [s for s in report.role_statements if s not in seen]
        seen.update(report.role_statements)


def _only(config: Config, spec: TargetSpec) -> Config:
    """The config with one target (and its discovery, if any: grants are per role and database)."""
    return replace(config, targets=(spec,), queries=tuple(q for q in config.queries
                                                          if q.targets is None or spec.name in q.targets))


def _fill(report: TargetGrants, state: TargetState, runner: Runner) -> None:
    session: Session = state.sessions[0]
    defaults = runner.config.defaults
    with state.session_locks[0]:
        session.ensure_connected()
        rows = session.run(PreparedSql(ROLE_FACTS_SQL), timeout=defaults.timeout,
                           lock_timeout=defaults.lock_timeout).rows
    role, database, superuser, read_all_stats, hidden, read_only, writes = rows[0]
    report.role, report.database = role, database
    if superuser:
        report.missing.append("nothing: the role is a superuser (a monitoring role should not be one)")
        return
    grantee = sql_identifier(role)
    wanted: dict[str, None] = {}  # USAGE on hidden extension schemas first, then the queries' own, sorted
    lifting: set[str] = set()
    eligible = runner.eligible_queries(state, with_skipped=True)
    required = {q.requires_extension for q in eligible}
    for extension, schema in (item.split(".", 1) for item in hidden):
        if extension in required:
            wanted[f"GRANT USAGE ON SCHEMA {sql_identifier(schema)} TO {grantee};"] = None
    refused = dict(state.skipped)
    for query in eligible:  # the user's own queries are not skipped but fail: probed here
        if query.name not in refused and query.pack is None and not query.optional and query.kind == "postgres":
            failed = _probe(session, state, query, runner)
            if failed is not None and SKIP_REASONS.get(failed.sqlstate or "") is not None:
                refused[query.name] = SKIP_REASONS[failed.sqlstate or ""]
    for name, reason in sorted(refused.items()):
        query = next(q for q in runner.config.queries if q.name == name)
        message = _refusal(session, state, query, runner)
        report.missing.append(f"{name} ({reason}: {message})")
        with state.session_locks[0]:
            statements = _grants_for(query, grantee, session, defaults.timeout, defaults.lock_timeout)
        lifting.update(statements)
        if not statements and not hidden:
            report.unresolved.append(f"{name}: {message}")
    if writes:
        report.missing.append("a role that cannot write: it may INSERT, UPDATE, DELETE or TRUNCATE some tables "
                              "here (REVOKE those; docs/security.md)")
    texts = [sql for q in eligible for sql in q.sql_texts]
    if not read_all_stats and any(OTHERS_ROWS.search(sql) for sql in texts):
        names = sorted({m.group(1) for sql in texts for m in OTHERS_ROWS.finditer(sql)})
        report.missing.append(f"other roles' rows of {', '.join(names)} (only the role's own are visible)")
        report.role_statements.append(f"GRANT pg_read_all_stats TO {grantee};")
    if any(STATISTICS_VIEW.search(sql) for sql in texts):
        with state.session_locks[0]:
            hidden_tables = session.run(PreparedSql(STATS_HIDDEN_SQL), timeout=defaults.timeout,
                                        lock_timeout=defaults.lock_timeout).rows
        _hidden_statistics(report, [(str(schema), int(count)) for schema, count in hidden_tables], grantee)
    if not read_only:  # a second lock on the door: every transaction of the role starts read-only
        report.role_statements.append(f"ALTER ROLE {grantee} SET default_transaction_read_only = on;")
    report.statements = list(wanted) + sorted(lifting - set(wanted))
    if (state.spec.sample_interval > 0 and state.runs_cluster_queries  # the sampler's database
            and waitsampling.EXTENSION in (state.facts.extensions if state.facts else ())):
        with state.session_locks[0]:  # the sampler reads pg_wait_sampling's profile where the role may
            missing, statements = waitsampling.profile_grants(session, grantee, defaults.timeout, defaults.lock_timeout)
        report.missing += missing
        report.statements += statements
    if state.spec.log is not None and state.spec.log.source == "sql":  # the server log, read through SQL
        with state.session_locks[0]:
            granted = session.run(PreparedSql(log_grants.PRIVILEGES_SQL), timeout=defaults.timeout,
                                  lock_timeout=defaults.lock_timeout).rows[0]
        missing, statements, role_statements = log_grants.log_grants(tuple(bool(v) for v in granted), grantee)
        report.missing += missing
        report.statements += statements
        report.role_statements += role_statements


def _hidden_statistics(report: TargetGrants, hidden: list[tuple[str, int]], grantee: str) -> None:
    """The tables whose bloat the role cannot estimate, and what would let it (as comments: the grant is
    read access to the data, a choice for the database's owner; docs/bloat.md)."""
    if not hidden:
        return
    tables = sum(count for _, count in hidden)
    schemas = f"{len(hidden)} schema" + ("s" if len(hidden) > 1 else "")
    report.missing.append(f"bloat estimates of {tables} tables in {schemas} (pg_stats hides the "
                          "columns of tables the role may not SELECT)")
    report.notes.append("bloat: to estimate the tables pg_stats hides, the role must be able to read their data: "
                        f"GRANT pg_read_all_data TO {grantee}; (PostgreSQL 14+), or per schema:")
    report.notes += [f"  GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {grantee};  ({count} tables)"
                     for schema, count in hidden[:HIDDEN_SCHEMAS_NAMED]]
    if len(hidden) > HIDDEN_SCHEMAS_NAMED:
        report.notes.append(f"  ... and {len(hidden) - HIDDEN_SCHEMAS_NAMED} more schemas")


def _refusal(session: Session, state: TargetState, query: QuerySpec, runner: Runner) -> str:
    """PostgreSQL's message for a skipped query, from probing it once more."""
    failed = _probe(session, state, query, runner)
    return "runs now" if failed is None else str(failed).removeprefix("ERROR:").strip()


def _probe(session: Session, state: TargetState, query: QuerySpec, runner: Runner) -> QueryFailed | None:
    """The query planned and started with LIMIT 0 (capability.py's probe): its failure, if any."""
    try:
        with state.session_locks[0]:
            for sql in probed_texts(query):
                session.run(PreparedSql(sql, limit=0, scope=scope_of(query)), timeout=runner.config.defaults.timeout,
                            lock_timeout=runner.config.defaults.lock_timeout)
    except QueryFailed as exc:
        return exc
    return None


class _Names(Visitor):
    """The relations and functions a statement names, as (schema or None, name) pairs."""

    def __init__(self) -> None:
        self.relations: set[tuple[str | None, str]] = set()
        self.functions: set[tuple[str | None, str]] = set()

    def visit_RangeVar(self, ancestors: object, node: pglast.ast.RangeVar) -> None:
        self.relations.add((node.schemaname, str(node.relname)))

    def visit_FuncCall(self, ancestors: object, node: pglast.ast.FuncCall) -> None:
        parts = [part.sval for part in node.funcname or ()]
        self.functions.add((parts[-2] if len(parts) > 1 else None, parts[-1]))


def _literal(text: str | None) -> str:
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


def _pairs(names: set[tuple[str | None, str]]) -> str:
    return ", ".join(f"({_literal(schema)}, {_literal(name)})" for schema, name in sorted(names, key=str)) or \
        "(NULL, NULL)"


# Each named object as the query resolves it (qualified: that schema; else the first visible one), if the
# role may not use it; named by the catalog. The names are literals of this statement (standard strings).
_MISSING = """
SELECT DISTINCT pg_catalog.format('GRANT USAGE ON SCHEMA %I TO ', n.nspname) FROM pg_catalog.pg_namespace n
  JOIN (VALUES {relations}, {functions}) AS named(schema, name) ON n.nspname = named.schema
  WHERE NOT pg_catalog.has_schema_privilege(n.oid, 'USAGE')
UNION ALL
SELECT DISTINCT pg_catalog.format('GRANT SELECT ON %I.%I TO ', n.nspname, c.relname)
  FROM (VALUES {relations}) AS named(schema, name)
  JOIN pg_catalog.pg_class c ON c.relname = named.name
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE CASE WHEN named.schema IS NULL THEN pg_catalog.pg_table_is_visible(c.oid) ELSE n.nspname = named.schema END
    AND NOT pg_catalog.has_table_privilege(c.oid, 'SELECT')
UNION ALL
SELECT DISTINCT pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO ', p.oid::pg_catalog.regprocedure)
  FROM (VALUES {functions}) AS named(schema, name)
  JOIN pg_catalog.pg_proc p ON p.proname = named.name
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  WHERE CASE WHEN named.schema IS NULL THEN pg_catalog.pg_function_is_visible(p.oid) ELSE n.nspname = named.schema END
    AND NOT pg_catalog.has_function_privilege(p.oid, 'EXECUTE')"""


def _grants_for(query: QuerySpec, grantee: str, session: Session, timeout: float, lock_timeout: float) -> list[str]:
    """The GRANTs that let the role use what the query's SQL (and its pick's) names, from the catalog."""
    names = _Names()
    for sql in probed_texts(query):
        names(pglast.parse_sql(sql))
    sql = _MISSING.format(relations=_pairs(names.relations), functions=_pairs(names.functions))
    rows = session.run(PreparedSql(sql, scope=scope_of(query)), timeout=timeout, lock_timeout=lock_timeout).rows
    return [f"{row[0]}{grantee};" for row in sorted(rows)]


def sql_identifier(name: str) -> str:
    """`name` as an SQL identifier: bare when lower-case letters, digits and underscores, else quoted."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def grants_text(config: Config) -> tuple[str, bool]:
    """The report for every PostgreSQL target (each database of a discovery root), and whether every one
    could be reached."""
    reports = [report for spec in config.targets if spec.kind == "postgres" for report in target_grants(config, spec)]
    return "\n".join(report.text() for report in reports), all(report.error is None for report in reports)
