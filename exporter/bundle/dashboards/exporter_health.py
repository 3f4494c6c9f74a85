"""pgvigil self-health: per-query success, duration, rows and errors, scrape time."""
from __future__ import annotations

from exporter.bundle.dashboards.panels import ANY_IS_BAD, PanelBuilder, PanelFn, T
from exporter.bundle.grafana import Bands, Dashboard, Panel, Query


def headline(p: PanelFn) -> tuple[Panel, ...]:
    """One row of stats: targets up and down, failing queries, the pgvigil version."""
    return (
        p("Targets up", "stat", [Query(f"sum(pg_up{{{T}}})", "up")], "short",
          "Targets pgvigil could connect to.", width=6, height=4),
        p("Targets down", "stat", [Query(f"count(pg_up{{{T}}} == 0) or vector(0)", "down")], "short",
          "Targets pgvigil could not connect to.", width=6, height=4, bands=ANY_IS_BAD),
        p("Failing queries", "stat",
          [Query(f"count(pgvigil_query_success{{{T}}} == 0) or vector(0)", "failing")], "short",
          "Queries whose last run failed.", width=6, height=4, bands=ANY_IS_BAD),
        p("Version", "stat", [Query("max by (version) (pgvigil_build_info)", "{{version}}")], "none",
          "pgvigil version serving the metrics.", width=6, height=4),
    )


def queries(p: PanelFn) -> tuple[Panel, ...]:
    """Per-query success, duration, rows, errors and data age."""
    return (
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
    )


def scrapes(p: PanelFn) -> tuple[Panel, ...]:
    """How long scrapes take and whether the last one had an error."""
    return (
        p("Scrape duration", "timeseries", [Query("pgvigil_scrape_duration_seconds", "scrape")], "s",
          "Time pgvigil took to answer a scrape.", minimum=0),
        p("Last scrape error", "timeseries", [Query("pg_exporter_last_scrape_error", "error")], "none",
          "1 when the last scrape had an error.", minimum=0,
          mappings=(("0", "ok", "green"), ("1", "error", "red"))),
    )


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard, its bands from the thresholds `builder` holds."""
    p = builder.panel
    panels = headline(p) + queries(p) + scrapes(p)
    return Dashboard("pgvigil-exporter", "pgvigil self-health",
                     "The exporter's own health: per-query success, duration, rows and errors.", panels)
