"""`pgvigil grants`: the SQL that gives the configured queries what they need, per target.

Each target is scraped once as its configured role; capability.py's probe says which queries
the role cannot run, and PostgreSQL's own refusal says why. Each refusal becomes the one GRANT
that lifts it (EXECUTE on a function, SELECT on a view, USAGE on a schema, including the schema
of an extension that is installed but hidden from the role). The queries reading other
sessions and statements (pg_stat_activity, pg_stat_statements, replication) run without
errors for any role but see only the role's own rows: pg_read_all_stats is proposed for them.
Nothing broader (no pg_monitor, no superuser) is ever proposed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from exporter.config import Config, TargetSpec
from exporter.scrape.capability import probed_texts
from exporter.scrape.runner import Runner
from exporter.scrape.session import PreparedSql, QueryFailed, Session, scope_of
from exporter.scrape.state import TargetState

# Views whose rows of other roles are hidden (NULLs, or no queryid) from a role without pg_read_all_stats.
OTHERS_ROWS = re.compile(r"\b(pg_stat_activity|pg_stat_statements|pg_stat_replication|pg_stat_wal_receiver|"
                         r"pg_stat_subscription|pg_replication_slots)\b")
_DENIED = re.compile(r"permission denied for (function|table|view|schema|sequence) ([\w.\"]+)")

ROLE_FACTS_SQL = (
    "SELECT current_user::text AS role, current_database()::text AS db,"
    " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,"
    " pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') AS read_all_stats,"
    " ARRAY(SELECT DISTINCT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
    "       WHERE NOT has_schema_privilege(n.oid, 'USAGE')) AS hidden_schemas")


@dataclass
class TargetGrants:
    """What one target's role lacks, and the statements that give it."""

    target: str
    role: str = ""
    database: str = ""
    error: str | None = None
    missing: list[str] = field(default_factory=list)  # "query: why", for the report
    statements: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # refusals no GRANT lifts

    def text(self) -> str:
        head = f"-- target {self.target}"
        if self.error is not None:
            return f"{head}: cannot connect: {self.error}\n"
        lines = [f"{head} (role {self.role}, database {self.database})"]
        lines += [f"-- missing today: {item}" for item in self.missing] or ["-- missing today: nothing"]
        lines += [f"-- no grant helps: {item}" for item in self.unresolved]
        lines += self.statements or ["-- nothing to grant"]
        return "\n".join(lines) + "\n"


def target_grants(config: Config, spec: TargetSpec, timeout: float = 30.0) -> TargetGrants:
    """Scrape `spec` once as its role and turn each refusal into the GRANT that lifts it."""
    report = TargetGrants(spec.name)
    runner = Runner(_only(config, spec))
    try:
        runner.scrape(timeout=timeout)
        state = next(iter(runner.targets.values()), None)
        if state is None or not state.up:
            report.error = (state.error if state is not None else None) or "unreachable"
            return report
        _fill(report, state, runner)
    finally:
        runner.close()
    return report


def _only(config: Config, spec: TargetSpec) -> Config:
    # One target, without discovery: grants are per role and database, and the DSN's database is the one asked.
    plain = replace(spec, databases=(), exclude_databases=())
    return replace(config, targets=(plain,), queries=tuple(q for q in config.queries
                                                           if q.targets is None or spec.name in q.targets))


def _fill(report: TargetGrants, state: TargetState, runner: Runner) -> None:
    session: Session = state.sessions[0]
    defaults = runner.config.defaults
    with state.session_locks[0]:
        session.ensure_connected()
        rows = session.run(PreparedSql(ROLE_FACTS_SQL), timeout=defaults.timeout,
                           lock_timeout=defaults.lock_timeout).rows
    role, database, superuser, read_all_stats, hidden = rows[0]
    report.role, report.database = role, database
    if superuser:
        report.missing.append("nothing: the role is a superuser (a monitoring role should not be one)")
        return
    grantee = sql_identifier(role)
    wanted: dict[str, None] = {}
    for schema in hidden:
        wanted[f"GRANT USAGE ON SCHEMA {sql_identifier(schema)} TO {grantee};"] = None
    for name, reason in sorted(state.skipped.items()):
        message = _refusal(session, state, runner, name)
        report.missing.append(f"{name} ({reason}: {message})")
        statement = _grant_for(message, grantee, session, defaults.timeout, defaults.lock_timeout)
        if statement is not None:
            wanted[statement] = None
        elif not hidden:
            report.unresolved.append(f"{name}: {message}")
    eligible = runner.eligible_queries(state, with_skipped=True)
    texts = [sql for q in eligible for sql in q.sql_texts]
    if not read_all_stats and any(OTHERS_ROWS.search(sql) for sql in texts):
        names = sorted({m.group(1) for sql in texts for m in OTHERS_ROWS.finditer(sql)})
        report.missing.append(f"other roles' rows of {', '.join(names)} (only the role's own are visible)")
        wanted[f"GRANT pg_read_all_stats TO {grantee};"] = None
    report.statements = list(wanted)


def _refusal(session: Session, state: TargetState, runner: Runner, name: str) -> str:
    """PostgreSQL's message for a skipped query, from probing it once more."""

    query = next(q for q in runner.config.queries if q.name == name)
    try:
        with state.session_locks[0]:
            for sql in probed_texts(query):
                session.run(PreparedSql(sql, limit=0, scope=scope_of(query)), timeout=runner.config.defaults.timeout,
                            lock_timeout=runner.config.defaults.lock_timeout)
    except QueryFailed as exc:
        return str(exc).removeprefix("ERROR:").strip()
    return "runs now"


def _grant_for(message: str, grantee: str, session: Session, timeout: float, lock_timeout: float) -> str | None:
    match = _DENIED.search(message)
    if match is None:
        return None
    kind, name = match.groups()
    if kind == "schema":
        return f"GRANT USAGE ON SCHEMA {name} TO {grantee};"
    if kind in ("table", "view", "sequence"):
        return f"GRANT SELECT ON {name} TO {grantee};"
    # A function: its full signature, so the GRANT names exactly the one that was refused.
    rows = session.run(PreparedSql(f"SELECT p.oid::regprocedure::text AS signature FROM pg_proc p "
                                   f"WHERE p.proname = '{name.strip(chr(34)).replace(chr(39), chr(39) * 2)}' "
                                   "AND NOT has_function_privilege(p.oid, 'EXECUTE')"),
                       timeout=timeout, lock_timeout=lock_timeout).rows
    signatures = [row[0] for row in rows]
    if not signatures:
        return None
    return "\n".join(f"GRANT EXECUTE ON FUNCTION {signature} TO {grantee};" for signature in signatures)


def sql_identifier(name: str) -> str:
    """`name` as an SQL identifier: bare when lower-case letters, digits and underscores, else quoted."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def grants_text(config: Config) -> tuple[str, bool]:
    """The report for every PostgreSQL target, and whether every one could be reached."""
    reports = [target_grants(config, spec) for spec in config.targets if spec.kind == "postgres"]
    return "\n".join(report.text() for report in reports), all(report.error is None for report in reports)
