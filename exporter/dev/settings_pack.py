"""Writes exporter/packs/settings.yaml: every numeric or boolean server setting as pg_settings_<name>.

postgres_exporter turns each row of pg_settings whose vartype is bool, integer or real into a gauge
named `pg_settings_<name>` ('.' and '-' become '_'), adding `_seconds` for time units and `_bytes`
for size units, and converting the value to that base unit (booleans are 1/0; -1 stays -1 because
it means "disabled"). A pack names its metrics up front, so the list of settings is fixed here: the
live server's (PostgreSQL 15 with pg_stat_statements and auto_explain loaded) plus the settings
only older or newer releases have (OTHER_VERSIONS). A setting the scraped server lacks is NULL
and simply not exported. Run `python -m exporter.dev.settings_pack` to regenerate.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from exporter.dev.throwaway import ThrowawayCluster

PACK = Path(__file__).resolve().parent.parent / "packs" / "settings.yaml"

# (name, vartype, unit, description) of settings the PostgreSQL 15 server does not have, from the
# pg_settings of 12-14 (removed since) and 16-17 (added since).
OTHER_VERSIONS: tuple[tuple[str, str, str, str], ...] = (
    ("operator_precedence_warning", "bool", "",
     "Emit a warning for constructs that changed meaning since PostgreSQL 9.4 (PG 12-13)."),
    ("vacuum_cleanup_index_scale_factor", "real", "",
     "Fraction of inserted tuples that triggers an index cleanup (PG 12-13)."),
    ("wal_keep_segments", "integer", "", "Sets the number of WAL files held for standby servers (PG 12)."),
    ("reserved_connections", "integer", "",
     "Sets the number of connection slots reserved for roles with pg_use_reserved_connections (PG 16+)."),
    ("vacuum_buffer_usage_limit", "integer", "kB",
     "Sets the buffer pool size for VACUUM, ANALYZE, and autovacuum (PG 16+)."),
    ("scram_iterations", "integer", "", "Sets the iteration count for SCRAM secret generation (PG 16+)."),
    ("send_abort_for_crash", "bool", "", "Send SIGABRT not SIGQUIT to child processes after backend crash (PG 16+)."),
    ("send_abort_for_kill", "bool", "", "Send SIGABRT not SIGKILL to stuck child processes (PG 16+)."),
    ("gss_accept_delegation", "bool", "",
     "Sets whether GSSAPI delegation should be accepted from the client (PG 16+)."),
    ("enable_presorted_aggregate", "bool", "",
     "Enables the planner's ability to produce plans that provide presorted input for ORDER BY / "
     "DISTINCT aggregate functions (PG 16+)."),
    ("max_parallel_apply_workers_per_subscription", "integer", "",
     "Maximum number of parallel apply workers per subscription (PG 16+)."),
    ("allow_alter_system", "bool", "", "Allows running the ALTER SYSTEM command (PG 17+)."),
    ("commit_timestamp_buffers", "integer", "8kB",
     "Sets the size of the dedicated buffer pool used for the commit timestamp cache (PG 17+)."),
    ("multixact_member_buffers", "integer", "8kB",
     "Sets the size of the dedicated buffer pool used for the MultiXact member cache (PG 17+)."),
    ("multixact_offset_buffers", "integer", "8kB",
     "Sets the size of the dedicated buffer pool used for the MultiXact offset cache (PG 17+)."),
    ("notify_buffers", "integer", "8kB",
     "Sets the size of the dedicated buffer pool used for the LISTEN/NOTIFY message cache (PG 17+)."),
    ("serializable_buffers", "integer", "8kB",
     "Sets the size of the dedicated buffer pool used for the serializable transaction cache (PG 17+)."),
    ("subtransaction_buffers", "integer", "8kB",
     "Sets the size of the dedicated buffer pool used for the subtransaction cache (PG 17+)."),
    ("transaction_buffers", "integer", "8kB",
     "Sets the size of the dedicated buffer pool used for the transaction status cache (PG 17+)."),
    ("summarize_wal", "bool", "", "Starts the WAL summarizer process to enable incremental backup (PG 17+)."),
    ("wal_summary_keep_time", "integer", "min", "Time for which WAL summary files should be kept (PG 17+)."),
    ("transaction_timeout", "integer", "ms",
     "Sets the maximum allowed duration of any transaction within a session (PG 17+)."),
    ("max_notify_queue_pages", "integer", "",
     "Sets the maximum number of allocated pages for NOTIFY / LISTEN queue (PG 17+)."),
    ("io_combine_limit", "integer", "8kB", "Limit on the size of data reads and writes (PG 17+)."),
    ("enable_group_by_reordering", "bool", "", "Enables reordering of GROUP BY keys (PG 17+)."),
    ("sync_replication_slots", "bool", "",
     "Enables a physical standby to synchronize logical failover replication slots from the primary server (PG 17+)."),
    ("event_triggers", "bool", "", "Enables event triggers (PG 17+)."),
    ("trace_connection_negotiation", "bool", "", "Logs details of pre-authentication connection handshake (PG 17+)."),
)

_SECONDS = {"ms": "0.001", "s": "1", "min": "60", "h": "3600", "d": "86400"}
_BYTES = {"B": "1", "kB": "1024", "MB": "1048576", "GB": "1073741824", "TB": "1099511627776",
          "1kB": "1024", "2kB": "2048", "4kB": "4096", "8kB": "8192", "16kB": "16384", "32kB": "32768",
          "64kB": "65536", "16MB": "16777216", "32MB": "33554432", "64MB": "67108864"}

HEADER = """\
# Generated by `python -m exporter.dev.settings_pack`: edit that module, not this file.
description: >-
  Every numeric and boolean server setting as pg_settings_<name> in base units (seconds, bytes,
  1/0 for booleans; -1 kept as -1), the names and conversions postgres_exporter uses, plus
  postmaster start time. Settings of PostgreSQL 12 to 17 and of pg_stat_statements and
  auto_explain are covered; a setting the server does not have is not exported, and settings of
  other extensions are not exported (add a query for them).
default: true
queries:
  - name: pg_postmaster
    help: Postmaster process
    scope: cluster
    sql: SELECT extract(epoch FROM pg_postmaster_start_time()) AS start_time_seconds
    metrics:
      start_time_seconds: {type: gauge, help: Time at which the postmaster started (epoch seconds)}

  # One pivot over pg_settings, cached for a minute. A value pgvigil set in its own session
  # (statement_timeout, lock_timeout) is read as reset_val, the value the session started with;
  # others as `setting`, as postgres_exporter reads them (file modes such as 0700 thus become
  # 700, and TCP keepalives show the socket's values). Each value is converted to its base unit
  # first; a unit postgres_exporter does not know, or a value that is not a number (a cloud
  # vendor's oddity), gives NULL, so the setting is skipped as postgres_exporter skips it.
  - name: pg_settings
    help: Server settings converted to base units
    scope: cluster
    ttl: 60s
    sql: |
      WITH raw AS (
        SELECT name, vartype, unit, CASE WHEN source = 'session' THEN reset_val ELSE setting END AS v
        FROM pg_settings
        WHERE vartype IN ('bool', 'integer', 'real')
      ), s AS (
        SELECT name,
               CASE
                 WHEN vartype = 'bool' THEN CASE WHEN v = 'on' THEN 1.0 ELSE 0.0 END
                 WHEN v !~ '^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$' THEN NULL
                 WHEN v::float8 = -1 THEN -1.0
                 ELSE v::float8 * CASE coalesce(unit, '')
{unit_cases}
                   END
               END AS value
        FROM raw
      )
      SELECT
{columns}
      FROM s
    metrics:
"""


def metric_column(name: str, vartype: str, unit: str) -> str | None:
    """The column (and pg_settings_ suffix) postgres_exporter would name this setting; None to skip it."""
    base = name.replace(".", "_").replace("-", "_")
    if vartype == "bool" or unit == "":
        return base
    if unit in _SECONDS:
        return base + "_seconds"
    if unit in _BYTES:
        return base + "_bytes"
    return None  # postgres_exporter skips a setting whose unit it does not know


def help_text(description: str, vartype: str, unit: str) -> str:
    text = description.strip()
    if vartype != "bool" and unit in _SECONDS:
        text += " [Units converted to seconds.]"
    elif vartype != "bool" and unit in _BYTES:
        text += " [Units converted to bytes.]"
    return text


def render(settings: list[tuple[str, str, str, str]]) -> str:
    rows = sorted({name: (name, vt, unit, desc) for name, vt, unit, desc in settings}.values())
    named = [(metric_column(n, vt, u), n, vt, u, d) for n, vt, u, d in rows]
    named = [row for row in named if row[0] is not None]
    cases = [f"                   WHEN '{u}' THEN {f}" for u, f in {**_SECONDS, **_BYTES}.items()]
    cases.append("                   WHEN '' THEN 1")
    columns = [f"        max(value) FILTER (WHERE name = '{n}') AS {col}" for col, n, _, _, _ in named]
    text = HEADER.replace("{unit_cases}", "\n".join(cases)).replace("{columns}", ",\n".join(columns))
    for col, _, vt, unit, desc in named:
        text += f"      {col}: {{type: gauge, help: {json.dumps(help_text(desc, vt, unit))}}}\n"
    return text


def live_settings() -> list[tuple[str, str, str, str]]:
    with ThrowawayCluster(preload=("pg_stat_statements", "auto_explain")) as pg:
        rows = pg.execute("SELECT name, vartype, coalesce(unit, ''), short_desc FROM pg_settings "
                          "WHERE vartype IN ('bool', 'integer', 'real')")
    return [(str(n), str(v), str(u), str(d)) for n, v, u, d in rows]


def main() -> int:
    PACK.write_text(render(live_settings() + list(OTHER_VERSIONS)), encoding="utf-8")
    print(f"wrote {PACK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
