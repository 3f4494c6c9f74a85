"""Panels of who blocks whom (the blocking pack) and of estimated bloat (the bloat pack).

Functions returning panels, so any dashboard can place them: the overview shows the blocking
tree, the storage dashboard the most bloated tables and indexes.
"""
from __future__ import annotations

from exporter.bundle.dashboards.panels import INDEX_LEGEND, TABLE_LEGEND, TD, PanelFn, T
from exporter.bundle.grafana import Panel, Query

ROOT_LEGEND = "{{target}} pid {{pid}} {{usename}} {{application_name}} ({{state}})"


def blocking(p: PanelFn) -> tuple[Panel, ...]:
    """The root blockers as a table (one row each, with their lock and tree size), the longest wait
    behind each, and the blocked sessions server-wide."""
    return (
        p("Blocking tree: root blockers", "table", [Query(f"pg_blocking_root_waiters{{{T}}}", ROOT_LEGEND)], "short",
          "Sessions that block others and wait for no one (top 5 per server): who (pid, user, application, "
          "database, state: idle in transaction is the classic case), the lock others wait for (type, mode, "
          "relation), and the value: sessions in the whole tree behind it. Runbook: PostgresLockBlocking.",
          width=24, height=7),
        p("Longest wait behind each root blocker", "timeseries",
          [Query(f"pg_blocking_root_max_wait_seconds{{{T}}}", ROOT_LEGEND)], "s",
          "How long the longest-waiting session behind each root blocker has waited; bands are the "
          "lock_blocking alert's levels.", "lock_blocking", minimum=0),
        p("Blocked sessions", "timeseries", [
            Query(f"pg_blocking_blocked_sessions{{{T}}}", "{{target}} blocked"),
            Query(f"pg_blocking_root_blockers{{{T}}}", "{{target}} root blockers"),
        ], "short", "Sessions waiting for a lock another session holds or is queued for, and the root blockers "
                    "at the top of their trees.", minimum=0),
    )


def bloat(p: PanelFn) -> tuple[Panel, ...]:
    """The tables and btree indexes with the most estimated wasted bytes, and their wasted share."""
    return (
        p("Most bloated tables (estimated)", "table",
          [Query(f"topk(10, pg_bloat_table_wasted_bytes{{{TD}}})", TABLE_LEGEND)], "bytes",
          "Estimated bytes of each table beyond what its live rows need at its fillfactor, from planner "
          "statistics as of the last VACUUM or ANALYZE (docs/bloat.md). Runbook: PostgresTableBloatHigh.",
          height=9),
        p("Most bloated indexes (estimated)", "table",
          [Query(f"topk(10, pg_bloat_index_wasted_bytes{{{TD}}})", INDEX_LEGEND)], "bytes",
          "Estimated bytes of each btree index beyond what its entries need at its fillfactor "
          "(docs/bloat.md). Runbook: PostgresIndexBloatHigh.", height=9),
        p("Wasted share of the most bloated tables and indexes", "timeseries", [
            Query(f"topk(5, pg_bloat_table_wasted_ratio{{{TD}}})", TABLE_LEGEND),
            Query(f"topk(5, pg_bloat_index_wasted_ratio{{{TD}}})", INDEX_LEGEND),
        ], "percentunit", "Estimated wasted bytes over size; bands are the table_bloat alert's levels (judged "
                          "only above its min_bytes).", "table_bloat", minimum=0, maximum=1, width=24),
    )
