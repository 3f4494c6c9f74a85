"""PgBouncer: its pools (clients waiting, server connections, utilization), traffic and limits.

Reads `kind: pgbouncer` targets, chosen with the `pooler` variable. A pool is one (database, user)
of SHOW POOLS; its utilization is the alert's: busy server connections over the pool_size of
its database (`name` in SHOW DATABASES).
"""
from __future__ import annotations

from exporter.bundle.dashboards.panels import ANY_IS_BAD, UP_MAPPINGS, PanelBuilder, PanelFn
from exporter.bundle.grafana import Bands, Dashboard, Panel, Query

P = 'target=~"$pooler"'
POOL_LEGEND = "{{target}} {{database}}/{{user}}"
# Same ratio as the PostgresPgBouncerPoolUtilizationHigh alert.
UTILIZATION = (f"pgbouncer_pools_server_active_connections{{{P}}}"
               " / on (job, instance, target, database) group_left"
               f" max by (job, instance, target, database) (label_join(pgbouncer_databases_pool_size{{{P}}} > 0,"
               ' "database", "", "name"))')


def rate(metric: str) -> str:
    return f"sum by (target, database) (rate({metric}{{{P}}}[$__rate_interval]))"


def headline(p: PanelFn) -> tuple[Panel, ...]:
    """One row of stats: reachable, clients waiting, the longest wait, the fullest pool."""
    return (
        p("PgBouncer up", "stat", [Query(f"pgbouncer_up{{{P}}}", "{{target}}")], "none",
          "Whether pgvigil could connect to the PgBouncer admin console at the last scrape.", width=6, height=4,
          bands=Bands((("red", None), ("green", 1.0))), mappings=UP_MAPPINGS),
        p("Clients waiting", "stat",
          [Query(f"max by (target) (pgbouncer_pools_client_waiting_connections{{{P}}})", "{{target}}")], "short",
          "Clients of the busiest pool waiting for a server connection.", "pgbouncer_clients_waiting",
          width=6, height=4),
        p("Longest wait", "stat",
          [Query(f"max by (target) (pgbouncer_pools_client_maxwait_seconds{{{P}}})", "{{target}}")], "s",
          "How long the oldest waiting client has waited for a server connection.", "pgbouncer_max_wait",
          width=6, height=4),
        p("Fullest pool", "stat", [Query(f"max by (target) ({UTILIZATION})", "{{target}}")], "percentunit",
          "Busy server connections of the fullest pool over its pool_size.", "pgbouncer_pool_utilization",
          width=6, height=4),
    )


def pools(p: PanelFn) -> tuple[Panel, ...]:
    """Client and server connections of each pool, its utilization and its longest wait."""
    return (
        p("Client connections by pool", "timeseries", [
            Query(f"pgbouncer_pools_client_active_connections{{{P}}}", f"{POOL_LEGEND} active"),
            Query(f"pgbouncer_pools_client_waiting_connections{{{P}}}", f"{POOL_LEGEND} waiting")], "short",
          "Clients linked to a server connection (active) and waiting for one (waiting).", minimum=0),
        p("Server connections by pool", "timeseries", [
            Query(f"pgbouncer_pools_server_active_connections{{{P}}}", f"{POOL_LEGEND} active"),
            Query(f"pgbouncer_pools_server_idle_connections{{{P}}}", f"{POOL_LEGEND} idle"),
            Query(f"pgbouncer_pools_server_used_connections{{{P}}}", f"{POOL_LEGEND} used")], "short",
          "Server connections serving a client (active), ready (idle), or idle long enough to be checked (used).",
          minimum=0),
        p("Pool utilization", "timeseries", [Query(UTILIZATION, POOL_LEGEND)], "percentunit",
          "Busy server connections of each pool over its database's pool_size; at 100 % clients queue.",
          "pgbouncer_pool_utilization", minimum=0),
        p("Longest client wait", "timeseries",
          [Query(f"pgbouncer_pools_client_maxwait_seconds{{{P}}}", POOL_LEGEND)], "s",
          "How long the oldest waiting client of each pool has waited.", "pgbouncer_max_wait", minimum=0),
    )


def traffic(p: PanelFn) -> tuple[Panel, ...]:
    """Queries and transactions per second, their mean time, client wait time and bytes."""
    return (
        p("Queries and transactions per second", "timeseries", [
            Query(rate("pgbouncer_stats_totals_queries_pooled_total"), "{{target}} {{database}} queries"),
            Query(rate("pgbouncer_stats_totals_sql_transactions_pooled_total"),
                  "{{target}} {{database}} transactions")],
          "ops", "Queries and transactions PgBouncer passed to PostgreSQL, per database.", minimum=0),
        p("Mean query time", "timeseries", [Query(
            f"{rate('pgbouncer_stats_totals_queries_duration_seconds_total')}"
            f" / {rate('pgbouncer_stats_totals_queries_pooled_total')}", "{{target}} {{database}}")], "s",
          "Time PostgreSQL spent per query, as PgBouncer measured it.", minimum=0),
        p("Client wait time per second", "timeseries",
          [Query(rate("pgbouncer_stats_totals_client_wait_seconds_total"), "{{target}} {{database}}")], "s",
          "Seconds clients spent waiting for a server connection, per second: 1 is one client always waiting.",
          minimum=0, bands=ANY_IS_BAD),
        p("Network traffic", "timeseries", [
            Query(rate("pgbouncer_stats_totals_received_bytes_total"), "{{target}} {{database}} received"),
            Query(rate("pgbouncer_stats_totals_sent_bytes_total"), "{{target}} {{database}} sent")], "Bps",
          "Bytes received from and sent to clients, per database.", minimum=0),
    )


def limits(p: PanelFn) -> tuple[Panel, ...]:
    """Client connections against max_client_conn, server connections against each database's pool."""
    return (
        p("Client connections and max_client_conn", "timeseries", [
            Query(f"pgbouncer_used_clients{{{P}}}", "{{target}} in use"),
            Query(f"pgbouncer_config_max_client_connections{{{P}}}", "{{target}} max_client_conn")], "short",
          "Client connections PgBouncer holds; past max_client_conn it refuses new ones.", minimum=0),
        p("Server connections by database", "timeseries", [
            Query(f"pgbouncer_databases_current_connections{{{P}}}", "{{target}} {{name}} open"),
            Query(f"pgbouncer_databases_pool_size{{{P}}}", "{{target}} {{name}} pool_size")], "short",
          "Server connections open for each database, against its pool size.", minimum=0),
    )


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard, its bands from the thresholds `builder` holds."""
    p = builder.panel
    panels = headline(p) + pools(p) + traffic(p) + limits(p)
    return Dashboard("pgvigil-pgbouncer", "PgBouncer",
                     "PgBouncer pools, waiting clients, traffic and limits, from its admin console.", panels,
                     variables=("pooler",), tags=("pgvigil", "postgresql", "pgbouncer"))
