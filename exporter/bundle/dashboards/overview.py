"""PostgreSQL Overview: availability, connections, throughput, caching, size and alerts at a glance."""
from __future__ import annotations

from exporter.bundle.dashboards.blocking_bloat import blocking
from exporter.bundle.dashboards.panels import ANY_IS_BAD, TABLE_LEGEND, TD, UP_MAPPINGS, PanelBuilder, PanelFn, T
from exporter.bundle.grafana import Bands, Dashboard, Panel, Query

# Same ratio as the connection_utilization alert: the reserved superuser slots are not usable.
UTILIZATION = (f"sum by (target) (pg_stat_activity_count{{{T}}}) / on (target) ("
               f"max by (target) (pg_settings_max_connections{{{T}}})"
               f" - max by (target) (pg_settings_superuser_reserved_connections{{{T}}}))")
COMMITS = f"rate(pg_stat_database_xact_commit{{{TD}}}[$__rate_interval])"
ROLLBACKS = f"rate(pg_stat_database_xact_rollback{{{TD}}}[$__rate_interval])"
HITS = f"rate(pg_stat_database_blks_hit{{{T}}}[$__rate_interval])"
READS = f"rate(pg_stat_database_blks_read{{{T}}}[$__rate_interval])"


def headline(p: PanelFn) -> tuple[Panel, ...]:
    """One row of stats: up, uptime, connections, the longest query, alerts firing."""
    return (
        p("PostgreSQL up", "stat", [Query(f"pg_up{{{T}}}", "{{target}}")], "none",
          "Whether pgvigil could connect to the target at the last scrape.", width=4, height=4,
          bands=Bands((("red", None), ("green", 1.0))), mappings=UP_MAPPINGS),
        p("Uptime", "stat", [Query(f"time() - pg_postmaster_start_time_seconds{{{T}}}", "{{target}}")], "s",
          "Time since the PostgreSQL server started.", width=4, height=4),
        p("Connection utilization", "stat", [Query(UTILIZATION, "{{target}}")], "percentunit",
          "Client connections as a share of the usable max_connections.", "connection_utilization", width=4, height=4),
        p("Active connections", "stat",
          [Query(f"sum by (target) (pg_stat_activity_count{{{T}, state=\"active\"}})", "{{target}}")],
          "short", "Sessions running a statement right now.", "active_connections", width=4, height=4),
        p("Longest running query", "stat",
          [Query(f"max by (target) (pg_stat_activity_max_query_duration_seconds{{{T}}})", "{{target}}")],
          "s", "Age of the oldest query that is still running.", "long_running_query", width=4, height=4),
        p("Alerts firing", "stat", [Query('count(ALERTS{alertstate="firing"}) or vector(0)', "firing")],
          "none", "Prometheus alerts currently firing.", width=4, height=4, bands=ANY_IS_BAD),
    )


def traffic(p: PanelFn) -> tuple[Panel, ...]:
    """Connections against their limit, transactions, rollbacks and the cache hit ratio."""
    return (
        p("Connections against max", "timeseries", [Query(UTILIZATION, "{{target}}")], "percentunit",
          "Client connections as a share of the usable max_connections; bands are the alert levels.",
          "connection_utilization", minimum=0),
        p("Connections by state", "timeseries", [
            Query(f"sum by (target, state) (pg_stat_activity_count{{{TD}}})", "{{target}} {{state}}"),
            Query(f"max by (target) (pg_settings_max_connections{{{T}}})", "{{target}} max_connections"),
        ], "short", "Connections per state next to max_connections.", minimum=0),
        p("Transactions per second", "timeseries",
          [Query(f"sum by (target, datname) ({COMMITS} + {ROLLBACKS})", "{{target}} {{datname}}")], "ops",
          "Committed plus rolled back transactions per second.", minimum=0),
        p("Rollback ratio", "timeseries", [Query(
            f"sum by (target, datname) ({ROLLBACKS}) / sum by (target, datname) ({COMMITS} + {ROLLBACKS})",
            "{{target}} {{datname}}")], "percentunit",
          "Share of transactions rolled back; a jump usually means application errors.", "rollback_ratio",
          minimum=0),
        p("Cache hit ratio", "timeseries", [Query(
            f"sum by (target) ({HITS}) / sum by (target) ({HITS} + {READS})", "{{target}}")], "percentunit",
          "Share of block requests served from shared buffers, whole server as the alert judges it; "
          "lower is worse.", "cache_hit_ratio"),
    )


def health(p: PanelFn) -> tuple[Panel, ...]:
    """Sizes, long queries, dead tuples, replication lag and the alerts table."""
    return (
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


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard, its bands from the thresholds `builder` holds."""
    p = builder.panel
    panels = headline(p) + traffic(p) + health(p) + blocking(p)
    return Dashboard("pgvigil-overview", "PostgreSQL Overview",
                     "Health at a glance: availability, connections, throughput, caching, size, alerts.",
                     panels, ("target", "datname"))
