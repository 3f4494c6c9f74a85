"""PostgreSQL Query Performance: pg_stat_statements, running queries, transactions and locks."""
from __future__ import annotations

from exporter.bundle.dashboards.panels import TD, PanelBuilder, PanelFn, T
from exporter.bundle.grafana import Dashboard, Panel, Query

BY = "target, datname, user, queryid"
SECONDS = f"pg_stat_statements_seconds_total{{{TD}}}"
CALLS = f"pg_stat_statements_calls_total{{{TD}}}"
GCOUNT = f"sum by (target) (pg_stat_statements_mean_time_seconds_gcount{{{T}}})"
STATEMENT_LEGEND = "{{datname}} {{user}} {{queryid}}"


def slower_than(le: str) -> str:
    """Statements whose mean execution time is above `le` seconds."""
    return (f"{GCOUNT} - sum by (target) "
            f"(pg_stat_statements_mean_time_seconds_bucket{{{T}, le=~\"{le}(\\\\.0)?\"}})")


def statement_stats(p: PanelFn) -> tuple[Panel, ...]:
    """One row of stats: the slowest statement, slow statement counts, active queries."""
    return (
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
    )


def statements(p: PanelFn) -> tuple[Panel, ...]:
    """pg_stat_statements: top statements by time and calls, the mean time distribution."""
    return (
        p("Top statements by total time", "table", [Query(
            f"topk(10, sum by ({BY}) (increase({SECONDS}[$__range])))", STATEMENT_LEGEND)], "s",
          "Statements that spent the most execution time in the selected range.", height=9),
        p("Top statements by mean time", "table", [Query(
            f"topk(10, sum by ({BY}) (increase({SECONDS}[$__range]))"
            f" / (sum by ({BY}) (increase({CALLS}[$__range])) > 0))", STATEMENT_LEGEND)], "s",
          "Statements with the highest mean execution time in the selected range.", height=9),
        p("Execution time per second", "timeseries", [Query(
            f"topk(10, sum by ({BY}) (rate({SECONDS}[$__rate_interval])))", STATEMENT_LEGEND)], "s",
          "Seconds spent executing each top statement per second of wall time.", minimum=0),
        p("Calls per second", "timeseries", [Query(
            f"topk(10, sum by ({BY}) (rate({CALLS}[$__rate_interval])))", STATEMENT_LEGEND)], "ops",
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
    )


def sessions(p: PanelFn) -> tuple[Panel, ...]:
    """Running queries, open transactions, lock waits, temporary files and deadlocks."""
    return (
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
        p("Sessions by wait event type", "timeseries", [Query(
            f"sum by (target, wait_event_type) (pg_stat_activity_wait_event_type_count{{{TD}}})",
            "{{target}} {{wait_event_type}}")], "short",
          "Client sessions by what they wait on (Lock, LWLock, IO, Client, Timeout ...); CPU: active and not "
          "waiting.", minimum=0),
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


def server_log(p: PanelFn) -> tuple[Panel, ...]:
    """Each slow execution, counted exactly from the server log (a target's `log:` section, docs/logs.md)."""
    return (
        p("Slow executions per second (server log)", "timeseries", [Query(
            f"sum by (target) (rate(pg_log_statement_duration_seconds_count{{{T}}}[$__rate_interval]))",
            "{{target}}")], "ops", "Executions slower than log_min_duration_statement, each one from the log.",
          minimum=0),
        p("Slow execution duration p50 / p95 (server log)", "timeseries", [
            Query(f"histogram_quantile({q}, sum by (target, le) "
                  f"(rate(pg_log_statement_duration_seconds_bucket{{{T}}}[$__rate_interval])))",
                  f"{{{{target}}}} p{name}")
            for q, name in (("0.5", "50"), ("0.95", "95"))], "s",
          "Durations of the logged executions (the histogram's buckets are dense around the 200 ms objective).",
          minimum=0),
    )


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard, its bands from the thresholds `builder` holds."""
    p = builder.panel
    panels = statement_stats(p) + statements(p) + sessions(p)
    panels += server_log(p)
    return Dashboard("pgvigil-queries", "PostgreSQL Query Performance",
                     "pg_stat_statements top statements, slow statements, running queries and locks.",
                     panels, ("target", "datname"))
