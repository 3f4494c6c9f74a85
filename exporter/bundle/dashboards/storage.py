"""PostgreSQL Storage and Maintenance: sizes and growth, bloat, vacuum and analyze, running vacuums,
index health, scans, I/O by backend type."""
from __future__ import annotations

from exporter.bundle.dashboards.blocking_bloat import bloat
from exporter.bundle.dashboards.panels import INDEX_LEGEND, TABLE_LEGEND, TD, PanelBuilder, PanelFn, T
from exporter.bundle.grafana import Dashboard, Panel, Query

SIZE = f"pg_database_size_bytes{{{TD}}}"
LAST = "pg_stat_user_tables_last_"


def runs(kind: str) -> str:
    """Manual plus automatic runs of `kind` (vacuum, analyze) per interval."""
    return " + ".join(f"increase(pg_stat_user_tables_{prefix}{kind}_count{{{TD}}}[$__rate_interval])"
                      for prefix in ("", "auto"))


def sizes(builder: PanelBuilder) -> tuple[Panel, ...]:
    """Database sizes, their growth and the days until the critical size; the largest relations."""
    p = builder.panel
    return (
        p("Database size", "timeseries", [Query(SIZE, "{{target}} {{datname}}")], "bytes",
          "Size of each database on disk.", "database_size", minimum=0),
        p("Database growth per day", "timeseries",
          [Query(f"deriv({SIZE}[1h]) * 86400", "{{target}} {{datname}}")], "bytes",
          "Growth rate over the last hour, extrapolated to a day."),
        p("Predicted database size in 7 days", "timeseries",
          [Query(f"predict_linear({SIZE}[6h], 7 * 86400)", "{{target}} {{datname}}")], "bytes",
          "Linear extrapolation of the last 6 hours; bands are the size alert levels.", "database_size",
          minimum=0),
        # Not growing means "far away": the estimate is capped at ten years instead of vanishing.
        p("Days until critical size", "stat", [Query(
            f"clamp_max(clamp_min(({builder.critical('database_size'):g} - {SIZE})"
            f" / clamp_min(deriv({SIZE}[6h]), 1e-9) / 86400, 0), 3650)", "{{datname}}")], "d",
          "At the growth rate of the last 6 hours, days until the database reaches the critical size "
          "(capped at 3650 days).", width=24, height=4),
        p("Largest tables", "table", [Query(f"topk(20, pg_stat_user_tables_size_bytes{{{TD}}})", TABLE_LEGEND)],
          "bytes", "Total size of each table including indexes and TOAST.", height=9),
        p("Largest indexes", "table",
          [Query(f"topk(20, pg_stat_user_indexes_size_bytes{{{TD}}})", INDEX_LEGEND)], "bytes",
          "Size of each index.", height=9),
    )


def maintenance(p: PanelFn) -> tuple[Panel, ...]:
    """Table growth, dead tuples, vacuum and analyze recency and runs, transaction ID age."""
    return (
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
            f"({{__name__=~\"{LAST}(auto)?vacuum\", {TD}}} > 0))", TABLE_LEGEND)], "s",
          "Tables vacuumed longest ago (manual or autovacuum); never vacuumed tables are not shown."),
        p("Time since last analyze", "timeseries", [Query(
            f"topk(10, time() - max by (target, datname, schemaname, relname) "
            f"({{__name__=~\"{LAST}(auto)?analyze\", {TD}}} > 0))", TABLE_LEGEND)], "s",
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
    )


VACUUM_LEGEND = "{{target}} {{datname}}.{{relname}}"
IO_BYTES = "sum by (target, backend_type) (rate(pg_stat_io_{}_bytes_total{{" + T + "}}[$__rate_interval]))"


def running_vacuums_and_io(p: PanelFn) -> tuple[Panel, ...]:
    """Running vacuums, how long and how far along; reads and writes by backend type."""
    return (
        p("Running vacuums", "timeseries",
          [Query(f"pg_stat_progress_vacuum_duration_seconds{{{TD}}}", VACUUM_LEGEND)], "s",
          "How long each running VACUUM or autovacuum has been at its table; bands are the alert levels.",
          "vacuum_duration", minimum=0),
        p("Vacuum progress", "timeseries", [Query(
            f"pg_stat_progress_vacuum_heap_blks_scanned{{{TD}}}"
            f" / clamp_min(pg_stat_progress_vacuum_heap_blks{{{TD}}}, 1)",
            VACUUM_LEGEND)], "percentunit",
          "Share of the table's heap scanned by each running vacuum; index vacuum cycles start over the "
          "index phase.", minimum=0, maximum=1),
        p("I/O by backend type", "timeseries", [
            Query(IO_BYTES.format("read"), "{{target}} {{backend_type}} read"),
            Query(IO_BYTES.format("write"), "{{target}} {{backend_type}} write"),
        ], "Bps", "Bytes read and written per second by client backends, the checkpointer, autovacuum ... "
                  "(pg_stat_io, PostgreSQL 16+).", minimum=0),
    )


def indexes_and_scans(p: PanelFn) -> tuple[Panel, ...]:
    """Unused and invalid indexes, sequential scans, per-table cache hit ratio."""
    return (
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


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard, its bands from the thresholds `builder` holds."""
    p = builder.panel
    panels = sizes(builder) + maintenance(p) + running_vacuums_and_io(p) + indexes_and_scans(p) + bloat(p)
    return Dashboard("pgvigil-storage", "PostgreSQL Storage and Maintenance",
                     "Sizes and growth, days to full, bloat, vacuum and analyze, index health, scans.",
                     panels, ("target", "datname"))
