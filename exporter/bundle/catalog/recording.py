"""Recording rules: ratios and counts the alerts and the dashboards share (name, PromQL)."""
from __future__ import annotations

# pg_stat_activity_count's labels below the target (postgres_exporter 0.20's): summed away, one series per target.
SESSION_LABELS = "datname, state, usename, application_name, backend_type, wait_event_type, wait_event"

RECORDING_RULES: list[tuple[str, str]] = [
    ("pgvigil:connection_utilization:ratio",
     f"sum without({SESSION_LABELS}) (pg_stat_activity_count)\n"
     "/ (pg_settings_max_connections - pg_settings_superuser_reserved_connections)"),
    ("pgvigil:active_connections:count",
     f'sum without({SESSION_LABELS}) (pg_stat_activity_count{{state="active"}})'),
    ("pgvigil:slow_statements:count",
     "pg_stat_statements_mean_time_seconds_gcount\n"
     '- ignoring(le) pg_stat_statements_mean_time_seconds_bucket{le=~"1|1.0"}'),
    ("pgvigil:xact:rate5m",
     "rate(pg_stat_database_xact_commit[5m]) + rate(pg_stat_database_xact_rollback[5m])"),
    ("pgvigil:xact_rollback:ratio_rate5m",
     "rate(pg_stat_database_xact_rollback[5m])\n"
     "/ (rate(pg_stat_database_xact_commit[5m]) + rate(pg_stat_database_xact_rollback[5m]))"),
    ("pgvigil:blocks_requested:rate5m",
     "sum without(datid, datname) (rate(pg_stat_database_blks_hit[5m]) + rate(pg_stat_database_blks_read[5m]))"),
    ("pgvigil:cache_hit:ratio_rate5m",
     "sum without(datid, datname) (rate(pg_stat_database_blks_hit[5m]))\n"
     "/ sum without(datid, datname) (rate(pg_stat_database_blks_hit[5m]) + rate(pg_stat_database_blks_read[5m]))"),
    ("pgvigil:storage_utilization:ratio",
     "sum without(datname) (pg_database_size_bytes) / pgvigil_storage_allocation_bytes"),
]
