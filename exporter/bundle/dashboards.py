"""The seven pgvigil Grafana dashboards: what each panel shows, with bands from the alert thresholds.

``write_dashboards`` renders them to ``<out_dir>/dashboards/<name>.json``; ``pgvigil bundle``
calls it next to the alert rules so both always use the same warning/critical levels.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

from exporter.bundle.grafana import Bands, Dashboard, Panel, Query, render_dashboard

T = 'target=~"$target"'
TD = 'target=~"$target", datname=~"$datname"'
TABLE_LEGEND = "{{datname}}.{{schemaname}}.{{relname}}"
INDEX_LEGEND = "{{datname}}.{{schemaname}}.{{indexrelname}}"
UP_MAPPINGS = (("0", "Down", "red"), ("1", "Up", "green"))
ANY_IS_BAD = Bands((("green", None), ("red", 1.0)))
ANY_IS_NOTABLE = Bands((("green", None), ("orange", 1.0)))

# Panels whose queries can only return data where the environment has something the live test
# (tests/e2e/test_dashboards_live.py) and `pgvigil demo` cannot have. Key: "<dashboard uid>/<panel title>".
NEEDS_ENVIRONMENT: dict[str, str] = {
    "pgvigil-vector/Vector indexes": "needs the pgvector extension with HNSW or IVFFlat indexes",
    "pgvigil-vector/Vector index sizes": "needs the pgvector extension with HNSW or IVFFlat indexes",
    "pgvigil-vector/Vector index size over time": "needs the pgvector extension with HNSW or IVFFlat indexes",
    "pgvigil-vector/Vector index scans per second": "needs the pgvector extension with HNSW or IVFFlat indexes",
    "pgvigil-vector/Index tuples read per second": "needs the pgvector extension with HNSW or IVFFlat indexes",
    "pgvigil-vector/Index tuples read per scan": "needs pgvector indexes that are being scanned",
}


def levels(thresholds: Mapping[str, Any], key: str) -> tuple[Optional[float], Optional[float], str]:
    """(warning, critical, direction) of one threshold; `Threshold` records or plain mappings."""
    if key not in thresholds:
        raise KeyError(f"the thresholds file has no {key!r} threshold, which the dashboards use")
    entry = thresholds[key]
    if isinstance(entry, Mapping):
        return entry.get("warning"), entry.get("critical"), entry.get("direction", "above")
    return entry.warning, entry.critical, entry.direction


class Catalogue:
    """Builds panels whose bands come from the thresholds file, then the dashboards from them."""

    def __init__(self, thresholds: Mapping[str, Any]) -> None:
        self.thresholds = thresholds

    def panel(self, title: str, kind: str, queries: list[Query], unit: str, description: str,
              threshold: str | None = None, **layout: Any) -> Panel:
        if threshold is not None:
            layout["bands"] = Bands.from_levels(*levels(self.thresholds, threshold))
        return Panel(title, kind, tuple(queries), unit, description, threshold, **layout)

    def critical(self, key: str) -> float:
        level = levels(self.thresholds, key)[1]
        if level is None:
            raise KeyError(f"threshold {key!r} has no critical level, which the dashboards use")
        return level

    # -- dashboards ------------------------------------------------------------
    def all(self) -> list[Dashboard]:
        return [self.overview(), self.queries(), self.storage(), self.replication(), self.security(),
                self.vector(), self.exporter()]

    def overview(self) -> Dashboard:
        p = self.panel
        # Same ratio as the connection_utilization alert: the reserved superuser slots are not usable.
        utilization = (f"sum by (target) (pg_stat_activity_count{{{T}}}) / on (target) ("
                       f"max by (target) (pg_settings_max_connections{{{T}}})"
                       f" - max by (target) (pg_settings_superuser_reserved_connections{{{T}}}))")
        commits = f"rate(pg_stat_database_xact_commit{{{TD}}}[$__rate_interval])"
        rollbacks = f"rate(pg_stat_database_xact_rollback{{{TD}}}[$__rate_interval])"
        hits = f"rate(pg_stat_database_blks_hit{{{T}}}[$__rate_interval])"
        reads = f"rate(pg_stat_database_blks_read{{{T}}}[$__rate_interval])"
        panels = (
            p("PostgreSQL up", "stat", [Query(f"pg_up{{{T}}}", "{{target}}")], "none",
              "Whether pgvigil could connect to the target at the last scrape.", width=4, height=4,
              bands=Bands((("red", None), ("green", 1.0))), mappings=UP_MAPPINGS),
            p("Uptime", "stat", [Query(f"time() - pg_postmaster_start_time_seconds{{{T}}}", "{{target}}")], "s",
              "Time since the PostgreSQL server started.", width=4, height=4),
            p("Connection utilization", "stat", [Query(utilization, "{{target}}")], "percentunit",
              "Client connections as a share of the usable max_connections.", "connection_utilization", width=4, height=4),
            p("Active connections", "stat",
              [Query(f"sum by (target) (pg_stat_activity_count{{{T}, state=\"active\"}})", "{{target}}")],
              "short", "Sessions running a statement right now.", "active_connections", width=4, height=4),
            p("Longest running query", "stat",
              [Query(f"max by (target) (pg_stat_activity_max_query_duration_seconds{{{T}}})", "{{target}}")],
              "s", "Age of the oldest query that is still running.", "long_running_query", width=4, height=4),
            p("Alerts firing", "stat", [Query('count(ALERTS{alertstate="firing"}) or vector(0)', "firing")],
              "none", "Prometheus alerts currently firing.", width=4, height=4, bands=ANY_IS_BAD),
            p("Connections against max", "timeseries", [Query(utilization, "{{target}}")], "percentunit",
              "Client connections as a share of the usable max_connections; bands are the alert levels.",
              "connection_utilization", minimum=0),
            p("Connections by state", "timeseries", [
                Query(f"sum by (target, state) (pg_stat_activity_count{{{TD}}})", "{{target}} {{state}}"),
                Query(f"max by (target) (pg_settings_max_connections{{{T}}})", "{{target}} max_connections"),
            ], "short", "Connections per state next to max_connections.", minimum=0),
            p("Transactions per second", "timeseries",
              [Query(f"sum by (target, datname) ({commits} + {rollbacks})", "{{target}} {{datname}}")], "ops",
              "Committed plus rolled back transactions per second.", minimum=0),
            p("Rollback ratio", "timeseries", [Query(
                f"sum by (target, datname) ({rollbacks}) / sum by (target, datname) ({commits} + {rollbacks})",
                "{{target}} {{datname}}")], "percentunit",
              "Share of transactions rolled back; a jump usually means application errors.", "rollback_ratio",
              minimum=0),
            p("Cache hit ratio", "timeseries", [Query(
                f"sum by (target) ({hits}) / sum by (target) ({hits} + {reads})", "{{target}}")], "percentunit",
              "Share of block requests served from shared buffers, whole server as the alert judges it; "
              "lower is worse.", "cache_hit_ratio"),
            p("Database size", "timeseries", [Query(f"pg_database_size_bytes{{{TD}}}", "{{target}} {{datname}}")],
              "bytes", "Size of each database on disk.", "database_size", minimum=0),
            p("Database growth per day", "timeseries",
              [Query(f"deriv(pg_database_size_bytes{{{TD}}}[1h]) * 86400", "{{target}} {{datname}}")], "bytes",
              "Growth rate over the last hour, extrapolated to a day."),
            p("Longest running query by database", "timeseries",
              [Query(f"pg_stat_activity_max_query_duration_seconds{{{TD}}}", "{{target}} {{datname}}")], "s",
              "Age of the oldest running query in each database.", "long_running_query", minimum=0),
            p("Dead tuples", "timeseries", [Query(f"topk(10, pg_stat_user_tables_n_dead_tup{{{TD}}})", TABLE_LEGEND)],
              "short", "Tables with the most dead tuples (top 10); vacuum reclaims them.", "dead_tuples", minimum=0),
            p("Replication lag", "timeseries", [Query(f"pg_replication_lag_seconds{{{T}}}", "{{target}}")], "s",
              "How far a replica's replay is behind; 0 on a primary.", "replication_lag", minimum=0),
            p("Alerts pending and firing", "table", [Query("ALERTS", "{{alertname}}")], "none",
              "Alerts Prometheus is firing, and those waiting out their `for:` (alertstate pending).",
              width=24, height=6),
        )
        return Dashboard("pgvigil-overview", "PostgreSQL Overview",
                         "Health at a glance: availability, connections, throughput, caching, size, alerts.",
                         panels, ("target", "datname"))

    def queries(self) -> Dashboard:
        p = self.panel
        by = "target, datname, user, queryid"
        seconds = f"pg_stat_statements_seconds_total{{{TD}}}"
        calls = f"pg_stat_statements_calls_total{{{TD}}}"
        gcount = f"sum by (target) (pg_stat_statements_mean_time_seconds_gcount{{{T}}})"

        def slower_than(le: str) -> str:
            return (f"{gcount} - sum by (target) "
                    f"(pg_stat_statements_mean_time_seconds_bucket{{{T}, le=~\"{le}(\\\\.0)?\"}})")

        statement_legend = "{{datname}} {{user}} {{queryid}}"
        panels = (
            p("Slowest statement (mean)", "stat",
              [Query(f"max by (target) (pg_stat_statements_mean_seconds_max{{{TD}}})", "{{target}}")], "s",
              "Highest mean execution time among statements called at least 5 times.", "statement_mean_time",
              width=6, height=4),
            p("Statements slower than 1 s", "stat", [Query(slower_than("1"), "{{target}}")], "short",
              "Statements whose mean execution time is above 1 s.", "slow_statements", width=6, height=4),
            p("Statements slower than 100 ms", "stat", [Query(slower_than("0.1"), "{{target}}")], "short",
              "Statements whose mean execution time is above 100 ms.", width=6, height=4),
            p("Active queries", "stat",
              [Query(f"sum by (target) (pg_stat_activity_query_age_seconds_gcount{{{T}}})", "{{target}}")],
              "short", "Queries running right now.", width=6, height=4),
            p("Top statements by total time", "table", [Query(
                f"topk(10, sum by ({by}) (increase({seconds}[$__range])))", statement_legend)], "s",
              "Statements that spent the most execution time in the selected range.", height=9),
            p("Top statements by mean time", "table", [Query(
                f"topk(10, sum by ({by}) (increase({seconds}[$__range]))"
                f" / (sum by ({by}) (increase({calls}[$__range])) > 0))", statement_legend)], "s",
              "Statements with the highest mean execution time in the selected range.", height=9),
            p("Execution time per second", "timeseries", [Query(
                f"topk(10, sum by ({by}) (rate({seconds}[$__rate_interval])))", statement_legend)], "s",
              "Seconds spent executing each top statement per second of wall time.", minimum=0),
            p("Calls per second", "timeseries", [Query(
                f"topk(10, sum by ({by}) (rate({calls}[$__rate_interval])))", statement_legend)], "ops",
              "How often the top statements run.", minimum=0),
            p("Statements by mean execution time", "bargauge", [Query(
                f"sum by (le) (pg_stat_statements_mean_time_seconds_bucket{{{T}}})", "mean ≤ {{le}} s")], "short",
              "How many statements have a mean execution time at or below each bound (cumulative)."),
            p("Highest mean statement time", "timeseries",
              [Query(f"pg_stat_statements_mean_seconds_max{{{TD}}}", "{{target}} {{datname}}")], "s",
              "Highest mean execution time per database, statements with at least 5 calls.",
              "statement_mean_time", minimum=0),
            p("Active query age distribution", "heatmap", [Query(
                f"sum by (le) (pg_stat_activity_query_age_seconds_bucket{{{T}}})", "{{le}}")], "s",
              "How long the currently running queries have been running.", width=24),
            p("Longest running query", "timeseries",
              [Query(f"pg_stat_activity_max_query_duration_seconds{{{TD}}}", "{{target}} {{datname}}")], "s",
              "Age of the oldest running query in each database.", "long_running_query", minimum=0),
            p("Longest idle in transaction", "timeseries", [Query(
                f"pg_stat_activity_max_idle_in_transaction_seconds{{{TD}}}", "{{target}} {{datname}}")], "s",
              "Sessions holding a transaction open without running anything block vacuum and hold locks.",
              "idle_in_transaction", minimum=0),
            p("Longest transaction by state", "timeseries", [Query(
                f"max by (target, datname, state) (pg_stat_activity_max_tx_duration{{{TD}}})",
                "{{target}} {{datname}} {{state}}")], "s", "Age of the oldest open transaction per state.",
              minimum=0),
            p("Sessions waiting on locks", "timeseries", [
                Query(f"pg_stat_activity_waiting_count{{{TD}}}", "{{target}} {{datname}} waiting"),
                Query(f"pg_locks_blocked_sessions{{{TD}}}", "{{target}} {{datname}} blocked"),
            ], "short", "Sessions waiting for a lock another session holds.", minimum=0),
            p("Longest lock wait", "timeseries",
              [Query(f"pg_locks_max_wait_seconds{{{TD}}}", "{{target}} {{datname}}")], "s",
              "How long the longest waiting lock request has waited.", minimum=0),
            p("Locks by mode", "timeseries",
              [Query(f"sum by (target, mode) (pg_locks_count{{{TD}}})", "{{target}} {{mode}}")], "short",
              "Locks held or awaited, by mode.", minimum=0),
            p("Temporary files written", "timeseries", [Query(
                f"sum by (target, datname) (rate(pg_stat_database_temp_bytes{{{TD}}}[$__rate_interval]))",
                "{{target}} {{datname}}")], "Bps", "Sorts and hashes spilling to disk: raise work_mem or fix "
                                                   "the query.", minimum=0),
            p("Deadlocks", "timeseries", [Query(
                f"sum by (target, datname) (increase(pg_stat_database_deadlocks{{{TD}}}[$__rate_interval]))",
                "{{target}} {{datname}}")], "short", "Deadlocks detected per interval.", minimum=0),
        )
        return Dashboard("pgvigil-queries", "PostgreSQL Query Performance",
                         "pg_stat_statements top statements, slow statements, running queries and locks.",
                         panels, ("target", "datname"))

    def storage(self) -> Dashboard:
        p = self.panel
        size = f"pg_database_size_bytes{{{TD}}}"
        last = "pg_stat_user_tables_last_"

        def runs(kind: str) -> str:
            return " + ".join(f"increase(pg_stat_user_tables_{prefix}{kind}_count{{{TD}}}[$__rate_interval])"
                              for prefix in ("", "auto"))
        panels = (
            p("Database size", "timeseries", [Query(size, "{{target}} {{datname}}")], "bytes",
              "Size of each database on disk.", "database_size", minimum=0),
            p("Database growth per day", "timeseries",
              [Query(f"deriv({size}[1h]) * 86400", "{{target}} {{datname}}")], "bytes",
              "Growth rate over the last hour, extrapolated to a day."),
            p("Predicted database size in 7 days", "timeseries",
              [Query(f"predict_linear({size}[6h], 7 * 86400)", "{{target}} {{datname}}")], "bytes",
              "Linear extrapolation of the last 6 hours; bands are the size alert levels.", "database_size",
              minimum=0),
            # Not growing means "far away": the estimate is capped at ten years instead of vanishing.
            p("Days until critical size", "stat", [Query(
                f"clamp_max(clamp_min(({self.critical('database_size'):g} - {size})"
                f" / clamp_min(deriv({size}[6h]), 1e-9) / 86400, 0), 3650)", "{{datname}}")], "d",
              "At the growth rate of the last 6 hours, days until the database reaches the critical size "
              "(capped at 3650 days).", width=24, height=4),
            p("Largest tables", "table", [Query(f"topk(20, pg_stat_user_tables_size_bytes{{{TD}}})", TABLE_LEGEND)],
              "bytes", "Total size of each table including indexes and TOAST.", height=9),
            p("Largest indexes", "table",
              [Query(f"topk(20, pg_stat_user_indexes_size_bytes{{{TD}}})", INDEX_LEGEND)], "bytes",
              "Size of each index.", height=9),
            p("Table growth per day", "timeseries", [Query(
                f"topk(10, deriv(pg_stat_user_tables_size_bytes{{{TD}}}[1h]) * 86400)", TABLE_LEGEND)], "bytes",
              "Fastest growing tables, growth over the last hour extrapolated to a day."),
            p("Dead tuples", "timeseries",
              [Query(f"topk(10, pg_stat_user_tables_n_dead_tup{{{TD}}})", TABLE_LEGEND)], "short",
              "Tables with the most dead tuples (top 10).", "dead_tuples", minimum=0),
            p("Dead tuple ratio", "timeseries", [Query(
                f"topk(10, pg_stat_user_tables_n_dead_tup{{{TD}}} / clamp_min(pg_stat_user_tables_n_live_tup{{{TD}}}"
                f" + pg_stat_user_tables_n_dead_tup{{{TD}}}, 1))", TABLE_LEGEND)], "percentunit",
              "Dead tuples as a share of all tuples; bloat grows when autovacuum cannot keep up.", minimum=0),
            p("Time since last vacuum", "timeseries", [Query(
                f"topk(10, time() - max by (target, datname, schemaname, relname) "
                f"({{__name__=~\"{last}(auto)?vacuum\", {TD}}} > 0))", TABLE_LEGEND)], "s",
              "Tables vacuumed longest ago (manual or autovacuum); never vacuumed tables are not shown."),
            p("Time since last analyze", "timeseries", [Query(
                f"topk(10, time() - max by (target, datname, schemaname, relname) "
                f"({{__name__=~\"{last}(auto)?analyze\", {TD}}} > 0))", TABLE_LEGEND)], "s",
              "Tables analyzed longest ago; stale statistics lead to bad plans."),
            p("Vacuum and analyze runs", "timeseries", [
                Query(f"sum by (target, datname) ({runs('vacuum')})", "{{target}} {{datname}} vacuum"),
                Query(f"sum by (target, datname) ({runs('analyze')})", "{{target}} {{datname}} analyze"),
            ], "short", "Manual and automatic vacuum and analyze runs per interval.", minimum=0),
            p("Transaction ID age", "timeseries", [
                Query(f"pg_database_frozen_xid_age{{{TD}}}", "{{target}} {{datname}}"),
                Query(f"max by (target) (pg_settings_autovacuum_freeze_max_age{{{T}}})",
                      "{{target}} autovacuum_freeze_max_age"),
            ], "short", "Age of the oldest unfrozen transaction ID per database; autovacuum forces a freeze "
                        "at autovacuum_freeze_max_age, and writes stop near 2^31 (wraparound).", minimum=0),
            p("Rows modified since last analyze", "timeseries",
              [Query(f"topk(10, pg_stat_user_tables_n_mod_since_analyze{{{TD}}})", TABLE_LEGEND)], "short",
              "Changes not yet reflected in the planner statistics.", minimum=0),
            p("Unused indexes", "table", [Query(
                f"pg_stat_user_indexes_size_bytes{{{TD}}} and on (target, datname, schemaname, relname, "
                f"indexrelname) pg_index_unused{{{TD}}} == 1", INDEX_LEGEND)], "bytes",
              "Non-unique indexes never scanned since statistics were reset, with their size: candidates to drop."),
            p("Invalid indexes", "table", [Query(f"pg_index_invalid{{{TD}}} == 1", INDEX_LEGEND)], "none",
              "Indexes left invalid by a failed CREATE INDEX CONCURRENTLY: rebuild or drop them."),
            p("Sequential scans per second", "timeseries", [Query(
                f"topk(10, rate(pg_stat_user_tables_seq_scan{{{TD}}}[$__rate_interval]))", TABLE_LEGEND)], "ops",
              "Tables scanned sequentially most often; large ones may lack an index.", minimum=0),
            p("Rows read by sequential scans", "timeseries", [Query(
                f"topk(10, rate(pg_stat_user_tables_seq_tup_read{{{TD}}}[$__rate_interval]))", TABLE_LEGEND)],
              "short", "Rows per second read by sequential scans.", minimum=0),
            p("Lowest table cache hit ratio", "timeseries", [Query(
                f"bottomk(10, pg_statio_user_tables_heap_blocks_hit{{{TD}}} / clamp_min("
                f"pg_statio_user_tables_heap_blocks_hit{{{TD}}} + pg_statio_user_tables_heap_blocks_read{{{TD}}}, 1))",
                TABLE_LEGEND)], "percentunit", "Tables whose heap blocks are most often read from disk.",
              "cache_hit_ratio"),
        )
        return Dashboard("pgvigil-storage", "PostgreSQL Storage and Maintenance",
                         "Sizes and growth, days to full, bloat, vacuum and analyze, index health, scans.",
                         panels, ("target", "datname"))

    def replication(self) -> Dashboard:
        p = self.panel
        backup = "pgvigil_backup_"
        panels = (
            p("Server role", "stat", [Query(f"pg_replication_is_replica{{{T}}}", "{{target}}")], "none",
              "Primary or replica.", width=6, height=4,
              mappings=(("0", "Primary", "green"), ("1", "Replica", "blue"))),
            p("Replication lag now", "stat",
              [Query(f"max by (target) (pg_replication_lag_seconds{{{T}}})", "{{target}}")], "s",
              "Replay lag of a replica; 0 on a primary.", "replication_lag", width=6, height=4),
            p("WAL archive age", "stat", [Query(f"pg_stat_archiver_last_archive_age{{{T}}}", "{{target}}")], "s",
              "Time since the last WAL segment was archived: the data you would lose (RPO).", "wal_archive_age",
              width=6, height=4),
            p("Last backup age", "stat",
              [Query(f"time() - {backup}last_success_timestamp_seconds{{{T}}}", "{{target}}")], "s",
              "Time since the last successful backup.", "backup_age", width=6, height=4),
            p("Replication lag", "timeseries", [Query(f"pg_replication_lag_seconds{{{T}}}", "{{target}}")], "s",
              "Replay lag of a replica; 0 on a primary.", "replication_lag", minimum=0),
            p("Replica WAL lag", "timeseries", [Query(
                f"pg_stat_replication_pg_wal_lsn_diff{{{T}}}", "{{target}} {{application_name}} {{client_addr}}")],
              "bytes", "Bytes of WAL each connected replica has not replayed yet.", minimum=0),
            p("Replication slots active", "timeseries",
              [Query(f"pg_replication_slots_active{{{T}}}", "{{target}} {{slot_name}}")], "none",
              "Whether a consumer is connected to each slot; an inactive slot retains WAL forever.",
              mappings=(("0", "inactive", "orange"), ("1", "active", "green"))),
            p("WAL retained by slots", "timeseries",
              [Query(f"pg_replication_slots_retained_bytes{{{T}}}", "{{target}} {{slot_name}}")], "bytes",
              "WAL kept on disk for each slot; it fills the disk when a consumer is gone.", minimum=0),
            p("WAL archive age against the RPO", "timeseries",
              [Query(f"pg_stat_archiver_last_archive_age{{{T}}}", "{{target}}")], "s",
              "Time since the last archived WAL segment; bands are the RPO alert levels.", "wal_archive_age",
              minimum=0),
            p("WAL archiving", "timeseries", [
                Query(f"increase(pg_stat_archiver_archived_count{{{T}}}[$__rate_interval])", "{{target}} archived"),
                Query(f"increase(pg_stat_archiver_failed_count{{{T}}}[$__rate_interval])", "{{target}} failed"),
            ], "short", "WAL segments archived and archive_command failures per interval.", minimum=0),
            p("Backup age", "timeseries",
              [Query(f"time() - {backup}last_success_timestamp_seconds{{{T}}}", "{{target}}")], "s",
              "Time since the last successful backup.", "backup_age", minimum=0),
            p("Backup size", "timeseries", [
                Query(f"{backup}last_size_bytes{{{T}}}", "{{target}} last"),
                Query(f"{backup}previous_size_bytes{{{T}}}", "{{target}} previous"),
            ], "bytes", "Size of the last backup next to the one before: a sudden drop deserves a look.",
              minimum=0),
            p("Backup duration", "timeseries",
              [Query(f"{backup}last_duration_seconds{{{T}}}", "{{target}}")], "s",
              "How long the last backup took.", minimum=0),
            p("Backup and verification result", "stat", [
                Query(f"{backup}last_run_success{{{T}}}", "{{target}} backup"),
                Query(f"{backup}last_verify_success{{{T}}}", "{{target}} verify"),
            ], "none", "Whether the last backup and the last restore test succeeded.",
              bands=Bands((("red", None), ("green", 1.0))), mappings=(("0", "Failed", "red"), ("1", "OK", "green"))),
            p("Backup failures", "timeseries",
              [Query(f"increase({backup}failures_total{{{T}}}[$__rate_interval])", "{{target}}")], "short",
              "Failed backup runs per interval.", minimum=0),
        )
        return Dashboard("pgvigil-replication", "PostgreSQL Replication, WAL and Backups",
                         "Replica lag, replication slots, WAL archiving against the RPO, backups.", panels)

    def security(self) -> Dashboard:
        p = self.panel
        panels = (
            p("Tables without row-level security", "stat",
              [Query(f"sum by (target) (pg_security_tables_without_rls{{{TD}}})", "{{target}}")], "short",
              "Tables in user schemas with row-level security disabled.", width=6, height=4, bands=ANY_IS_NOTABLE),
            p("Superuser roles", "stat", [Query(f"pg_roles_superuser_count{{{T}}}", "{{target}}")], "short",
              "Roles with SUPERUSER.", width=6, height=4),
            p("Login roles", "stat", [Query(f"pg_roles_login_count{{{T}}}", "{{target}}")], "short",
              "Roles that can log in.", width=6, height=4),
            p("Connected users", "stat",
              [Query(f"count by (target) (pg_stat_activity_by_user_count{{{T}}} > 0)", "{{target}}")], "short",
              "Distinct users with an open connection.", width=6, height=4),
            p("Tables with row-level security disabled", "table",
              [Query(f"pg_security_table_rls_disabled{{{TD}}} == 1", TABLE_LEGEND)], "none",
              "Each table in a user schema without RLS: fine for internal tables, a leak for exposed ones.",
              height=9),
            p("Tables without RLS by schema", "table",
              [Query(f"pg_security_tables_without_rls{{{TD}}}", "{{datname}}.{{schemaname}}")], "short",
              "Count of tables without row-level security per schema.", height=9),
            p("Connections per user", "timeseries", [Query(
                f"sum by (target, usename) (pg_stat_activity_by_user_count{{{T}}})", "{{target}} {{usename}}")],
              "short", "Connections per role; an unexpected role or a surge stands out.", minimum=0),
            p("Connections per client address", "timeseries", [Query(
                f"sum by (target, client_addr) (pg_stat_activity_by_client_count{{{T}}})",
                "{{target}} {{client_addr}}")], "short", "Connections per client address.", minimum=0),
            p("Superuser and login roles", "timeseries", [
                Query(f"pg_roles_superuser_count{{{T}}}", "{{target}} superusers"),
                Query(f"pg_roles_login_count{{{T}}}", "{{target}} login roles"),
            ], "short", "A new superuser or login role outside a deployment is worth a question.", minimum=0),
            p("Rolled back transactions per second", "timeseries", [Query(
                f"sum by (target, datname) (rate(pg_stat_database_xact_rollback{{{TD}}}[$__rate_interval]))",
                "{{target}} {{datname}}")], "ops", "Failed transactions, e.g. permission errors or probing.",
              minimum=0),
        )
        return Dashboard("pgvigil-security", "PostgreSQL Security",
                         "Row-level security coverage, privileged roles, who is connected from where.",
                         panels, ("target", "datname"))

    def vector(self) -> Dashboard:
        p = self.panel
        size = f"pg_vector_index_size_bytes{{{TD}}}"
        scans = f"rate(pg_vector_index_scans_total{{{TD}}}[$__rate_interval])"
        tuples = f"rate(pg_vector_index_tuples_read_total{{{TD}}}[$__rate_interval])"
        legend = "{{datname}}.{{indexrelname}} ({{method}})"
        panels = (
            p("Vector indexes", "stat", [Query(f"count by (target) ({size})", "{{target}}")], "short",
              "HNSW and IVFFlat indexes.", width=24, height=4),
            p("Vector index sizes", "table", [Query(size, legend)], "bytes",
              "Size of each pgvector index; HNSW indexes work best when they fit in memory."),
            p("Vector index size over time", "timeseries", [Query(size, legend)], "bytes",
              "Size of each pgvector index.", minimum=0),
            p("Vector index scans per second", "timeseries", [Query(scans, legend)], "ops",
              "Similarity searches served by each index.", minimum=0),
            p("Index tuples read per second", "timeseries", [Query(tuples, legend)], "short",
              "Index entries read by vector searches.", minimum=0),
            p("Index tuples read per scan", "timeseries", [Query(f"{tuples} / {scans}", legend)], "short",
              "Entries read per search; it grows with ef_search / probes and with index size.", minimum=0),
        )
        return Dashboard("pgvigil-vector", "PostgreSQL Vector Search", "pgvector index sizes and scans.",
                         panels, ("target", "datname"))

    def exporter(self) -> Dashboard:
        p = self.panel
        panels = (
            p("Targets up", "stat", [Query(f"sum(pg_up{{{T}}})", "up")], "short",
              "Targets pgvigil could connect to.", width=6, height=4),
            p("Targets down", "stat", [Query(f"count(pg_up{{{T}}} == 0) or vector(0)", "down")], "short",
              "Targets pgvigil could not connect to.", width=6, height=4, bands=ANY_IS_BAD),
            p("Failing queries", "stat",
              [Query(f"count(pgvigil_query_success{{{T}}} == 0) or vector(0)", "failing")], "short",
              "Queries whose last run failed.", width=6, height=4, bands=ANY_IS_BAD),
            p("Version", "stat", [Query("max by (version) (pgvigil_build_info)", "{{version}}")], "none",
              "pgvigil version serving the metrics.", width=6, height=4),
            p("Query success", "table", [Query(f"pgvigil_query_success{{{T}}}", "{{target}} {{query}}")], "none",
              "Whether each query's last run succeeded.", height=9, bands=Bands((("red", None), ("green", 1.0))),
              mappings=(("0", "failed", "red"), ("1", "ok", "green"))),
            p("Query duration", "timeseries",
              [Query(f"topk(10, pgvigil_query_duration_seconds{{{T}}})", "{{target}} {{query}}")], "s",
              "Slowest queries of the last run (top 10).", height=9, minimum=0),
            p("Rows per query", "timeseries",
              [Query(f"topk(10, pgvigil_query_rows{{{T}}})", "{{target}} {{query}}")], "short",
              "Rows returned by each query (top 10); a jump can mean a cardinality problem.", minimum=0),
            p("Query errors by reason", "timeseries", [Query(
                f"sum by (target, query, reason) (increase(pgvigil_query_errors_total{{{T}}}[$__rate_interval]))",
                "{{target}} {{query}} {{reason}}")], "short",
              "Errors per interval: error, timeout, invalid_value, duplicate, cardinality.", minimum=0),
            p("Time since last successful run", "timeseries", [Query(
                f"topk(10, time() - pgvigil_query_last_success_timestamp_seconds{{{T}}})", "{{target}} {{query}}")],
              "s", "Queries whose data is oldest; cached queries (ttl) age up to their ttl.", minimum=0),
            p("Scrape duration", "timeseries", [Query("pgvigil_scrape_duration_seconds", "scrape")], "s",
              "Time pgvigil took to answer a scrape.", minimum=0),
            p("Last scrape error", "timeseries", [Query("pg_exporter_last_scrape_error", "error")], "none",
              "1 when the last scrape had an error.", minimum=0,
              mappings=(("0", "ok", "green"), ("1", "error", "red"))),
        )
        return Dashboard("pgvigil-exporter", "pgvigil self-health",
                         "The exporter's own health: per-query success, duration, rows and errors.", panels)


def dashboard_file_name(spec: Dashboard) -> str:
    return spec.uid.removeprefix("pgvigil-") + ".json"


def build_dashboards(thresholds: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """File name -> Grafana dashboard JSON model, for every shipped dashboard."""
    return {dashboard_file_name(spec): render_dashboard(spec) for spec in Catalogue(thresholds).all()}


def write_dashboards(thresholds: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write every dashboard to ``out_dir/dashboards/<name>.json``; returns the paths written."""
    folder = Path(out_dir) / "dashboards"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in build_dashboards(thresholds).items():
        path = folder / name
        path.write_text(json.dumps(model, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
