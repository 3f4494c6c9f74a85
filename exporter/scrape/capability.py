"""What the monitoring role may run: queries it cannot are skipped, not failed.

Each query (and its pick, if any) is planned and started once with `LIMIT 0`: PostgreSQL checks the role's
SELECT privilege on every table and view and its EXECUTE privilege on every function
when the executor starts, and resolves every name (an extension's view in a schema
off the search path, a view of another version) before that, yet no row is read.
(The probe's text names `pgvigil_probe`: it has its own pg_stat_statements entry.)
A shipped pack's query (or one marked `optional: true`) refused for one of those reasons is
skipped on that target (pgvigil_query_skipped{target,query,reason}), logged once, never counted as an error;
the user's own queries fail instead, counted, and `check --connect` shows why (a missing GRANT or a typo).
it is probed again every CAPABILITY_REFRESH_SECONDS, so a GRANT takes effect without
a restart. Any other failure is left to the query's real run to report.
"""
from __future__ import annotations

import logging
from typing import Sequence

from exporter.config import QuerySpec
from exporter.scrape.session import PreparedSql, QueryFailed, prepare_sql, scope_of
from exporter.scrape.state import TargetState

log = logging.getLogger(__name__)

CAPABILITY_REFRESH_SECONDS = 300.0

# SQLSTATE -> the `reason` label of pgvigil_query_skipped.
SKIP_REASONS = {
    "42501": "permission_denied",   # insufficient_privilege: no SELECT on a view, no EXECUTE on a function
    "42P01": "missing_relation",    # undefined_table: a view absent here (extension elsewhere, other version)
    "42883": "missing_function",    # undefined_function
    "3F000": "missing_schema",      # invalid_schema_name
}


def probe(state: TargetState, queries: Sequence[QuerySpec], timeout: float, lock_timeout: float) -> None:
    """Probe each query on the target's first session and record which must be skipped.

    Stops early, leaving the rest for the next run's probe, when the session is lost."""
    for query in queries:
        try:
            with state.session_locks[0]:
                for sql in probed_texts(query, state.previous_run.get(query.name)):
                    state.sessions[0].run(PreparedSql(sql, limit=0, scope=scope_of(query)), timeout=timeout,
                                          lock_timeout=lock_timeout)
        except QueryFailed as exc:
            if exc.connection_lost:
                return
            reason = SKIP_REASONS.get(exc.sqlstate or "")
            if reason is not None and (query.pack is not None or query.optional):
                state.skip(query, reason, str(exc))
                continue
            # The user's own query: a missing table or GRANT is an error (its run fails, counted), not a skip.
        state.unskip(query)
    state.mark_probed()


def probed_texts(query: QuerySpec, previous_run: str | None = None) -> list[str]:
    """What probing a query runs (with LIMIT 0): its SQL (no ids picked), and its pick's."""
    texts = [prepare_sql(query, previous_run).sql] + ([query.pick.sql] if query.pick is not None else [])
    return [probe_sql(sql) for sql in texts]


def probe_sql(sql: str) -> str:
    """The probe's text for a query's SQL (run with LIMIT 0)."""
    # One more subquery level: the probe gets its own pg_stat_statements entry (its text names
    # pgvigil_probe), so the query's own calls and rows there stay those of its real runs.
    return f"SELECT * FROM (\n{sql.strip().rstrip(';')}\n) AS pgvigil_probe"
