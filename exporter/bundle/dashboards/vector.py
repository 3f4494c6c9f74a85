"""PostgreSQL Vector Search: pgvector index sizes, memory and scans, similarity search rate and latency."""
from __future__ import annotations

from exporter.bundle.dashboards.panels import TD, PanelBuilder, PanelFn
from exporter.bundle.grafana import Dashboard, Panel, Query

SIZE = f"pg_vector_index_size_bytes{{{TD}}}"
# The vector pack refreshes index statistics every 30 s (its ttl): a shorter rate window, such as
# $__rate_interval under a fast scrape, would see no change most of the time.
SCANS = f"rate(pg_vector_index_scans_total{{{TD}}}[1m])"
TUPLES = f"rate(pg_vector_index_tuples_read_total{{{TD}}}[1m])"
LEGEND = "{{datname}}.{{indexrelname}} ({{method}})"
CACHED = f"pg_vector_index_cached_bytes{{{TD}}}"
CALLS = f"rate(pg_vector_search_calls_total{{{TD}}}[$__rate_interval])"
SEARCH_SECONDS = f"rate(pg_vector_search_seconds_total{{{TD}}}[$__rate_interval])"


def vector_indexes(p: PanelFn) -> tuple[Panel, ...]:
    """Index count, sizes, scans and tuples read per scan."""
    return (
        p("Vector indexes", "stat", [Query(f"count by (target) ({SIZE})", "{{target}}")], "short",
          "HNSW and IVFFlat indexes.", width=24, height=4),
        p("Vector index sizes", "table", [Query(SIZE, LEGEND)], "bytes",
          "Size of each pgvector index; HNSW indexes work best when they fit in memory."),
        p("Vector index size over time", "timeseries", [Query(SIZE, LEGEND)], "bytes",
          "Size of each pgvector index.", minimum=0),
        p("Vector index scans per second", "timeseries", [Query(SCANS, LEGEND)], "ops",
          "Similarity searches served by each index.", minimum=0),
        p("Index tuples read per second", "timeseries", [Query(TUPLES, LEGEND)], "short",
          "Index entries read by vector searches.", minimum=0),
        p("Index tuples read per scan", "timeseries", [Query(f"{TUPLES} / {SCANS}", LEGEND)], "short",
          "Entries read per search; it grows with ef_search / probes and with index size.", minimum=0),
    )


def memory_and_searches(p: PanelFn) -> tuple[Panel, ...]:
    """Index memory and operator classes (halfvec halves an index), similarity search rate and latency."""
    return (
        p("Vector index memory in shared buffers", "timeseries",
          [Query(f"{CACHED} / ignoring(method) clamp_min({SIZE}, 1)", "{{datname}}.{{indexrelname}}")],
          "percentunit", "Share of each index held in shared buffers (needs pg_buffercache); an HNSW index "
                         "that does not fit reads from disk on every search.", minimum=0, maximum=1),
        p("Vector index size by operator class", "table", [Query(
            f"{SIZE} * on (target, datname, schemaname, relname, indexrelname) group_left (opclass) "
            f"pg_vector_index_info{{{TD}}}", "{{datname}}.{{indexrelname}} {{opclass}}")], "bytes",
          "Size of each index with its operator class: halfvec_* indexes take about half the space of vector_*."),
        p("Similarity searches per second", "timeseries", [Query(CALLS, "{{target}} {{datname}}")], "ops",
          "Statements ordering by a pgvector distance operator (from pg_stat_statements).", minimum=0),
        p("Similarity search mean time", "timeseries",
          [Query(f"{SEARCH_SECONDS} / {CALLS}", "{{target}} {{datname}}")], "s",
          "Mean execution time of a similarity search; the efficiency alert compares it with a day earlier.",
          minimum=0),
    )


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard, its bands from the thresholds `builder` holds."""
    p = builder.panel
    panels = vector_indexes(p) + memory_and_searches(p)
    return Dashboard("pgvigil-vector", "PostgreSQL Vector Search",
                     "pgvector index sizes, memory and scans, similarity search rate and latency.",
                     panels, ("target", "datname"))
