"""PostgreSQL Vector Search: pgvector index sizes and scans."""
from __future__ import annotations

from exporter.bundle.dashboards.panels import TD, PanelBuilder, PanelFn
from exporter.bundle.grafana import Dashboard, Panel, Query

SIZE = f"pg_vector_index_size_bytes{{{TD}}}"
SCANS = f"rate(pg_vector_index_scans_total{{{TD}}}[$__rate_interval])"
TUPLES = f"rate(pg_vector_index_tuples_read_total{{{TD}}}[$__rate_interval])"
LEGEND = "{{datname}}.{{indexrelname}} ({{method}})"


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


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard, its bands from the thresholds `builder` holds."""
    p = builder.panel
    panels = vector_indexes(p)
    return Dashboard("pgvigil-vector", "PostgreSQL Vector Search", "pgvector index sizes and scans.",
                     panels, ("target", "datname"))
