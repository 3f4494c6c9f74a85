"""Every series the server log adds, declared once: the collector renders from it, docs/metrics.md lists it."""
from __future__ import annotations

from typing import NamedTuple


class LogMetric(NamedTuple):
    name: str  # as exposed (a counter's `_total` included)
    type: str
    labels: tuple[str, ...]  # besides `target` and the target's constant labels
    help: str


METRICS = (
    LogMetric("pg_log_messages_total", "counter", ("severity", "sqlstate"),
              "Server log entries by severity and SQLSTATE (the first 100 codes exactly, later ones as their class)"),
    LogMetric("pg_log_authentication_failures_total", "counter", ("user", "database", "method", "client_network"),
              "Failed logins by user, database and method (a name the server does not have: unknown; "
              "client_network only with client_network_label)"),
    LogMetric("pg_log_connections_total", "counter", (), "Connections authorized (log_connections)"),
    LogMetric("pg_log_disconnections_total", "counter", (), "Sessions ended (log_disconnections)"),
    LogMetric("pg_log_deadlocks_total", "counter", (), "Deadlocks detected (ERROR 40P01)"),
    LogMetric("pg_log_checkpoints_too_frequent_total", "counter", (),
              "Checkpoints occurring too frequently (checkpoint_warning)"),
    LogMetric("pg_log_temp_files_total", "counter", (), "Temporary files written (log_temp_files)"),
    LogMetric("pg_log_temp_file_bytes_total", "counter", (), "Bytes of temporary files written (log_temp_files)"),
    LogMetric("pg_log_lock_waits_total", "counter", (), "Lock waits longer than deadlock_timeout (log_lock_waits)"),
    LogMetric("pg_log_too_many_connections_total", "counter", (),
              "Connections refused: too many clients (FATAL 53300)"),
    LogMetric("pg_log_panics_total", "counter", (), "PANIC entries: the server crashed"),
    LogMetric("pg_log_crash_recoveries_total", "counter", (), "Starts in automatic crash recovery"),
    LogMetric("pg_log_autovacuum_runs_total", "counter", ("kind",),
              "Autovacuum (kind vacuum) and autoanalyze (kind analyze) runs logged (log_autovacuum_min_duration)"),
    LogMetric("pg_log_autovacuum_duration_seconds_total", "counter", ("kind",),
              "Seconds of the logged autovacuum and autoanalyze runs"),
    LogMetric("pg_log_statement_cancellations_total", "counter", ("reason",),
              "Statements cancelled, by reason (statement_timeout, lock_timeout, user_request, "
              "idle_in_transaction_timeout, other)"),
    LogMetric("pg_log_statement_duration_seconds", "histogram", ("le",),
              "Statement executions slower than log_min_duration_statement, by duration"),
    LogMetric("pgvigil_log_read_bytes_total", "counter", (),
              "Bytes of server log read (an entry cut by the end of a read is read again)"),
    LogMetric("pgvigil_log_lines_total", "counter", (), "Server log entries parsed"),
    LogMetric("pgvigil_log_parse_errors_total", "counter", (),
              "Server log lines that are not entries of the format (or entries too long to keep)"),
    LogMetric("pgvigil_log_backlog_bytes", "gauge", (),
              "Server log bytes not read yet (the budget per interval was spent)"),
    LogMetric("pgvigil_log_files_rotated_total", "counter", ("reason",),
              "Log files that appeared (new_file), were renamed, truncated or deleted"),
    LogMetric("pgvigil_log_source_errors_total", "counter", ("reason",),
              "Failed reads of the server log by reason (permission_denied, not_found, connect, timeout, "
              "prefix_unknown, ...)"),
    LogMetric("pgvigil_log_readable", "gauge", (),
              "Whether the latest read of the server log succeeded (0: not read yet, or see "
              "pgvigil_log_source_errors_total)"),
)
BY_NAME = {metric.name: metric for metric in METRICS}


def family_name(metric: LogMetric) -> str:
    return metric.name[:-len("_total")] if metric.type == "counter" else metric.name


def markdown() -> list[str]:
    """docs/metrics.md's section on the server log (exporter.bundle.metrics_doc)."""
    rows = [f"| `{m.name}` | {m.type} | {', '.join(f'`{label}`' for label in m.labels) or '-'} | {m.help} |"
            for m in METRICS]
    return ["", "## Server log", "",
            "With a target's `log:` section ([logs.md](logs.md)) pgvigil reads the server log in the background and",
            "exports these counters (never a text of the log); `pgvigil_log_*` are about the reading itself.", "",
            "| metric | type | labels | meaning |", "|---|---|---|---|", *rows]
