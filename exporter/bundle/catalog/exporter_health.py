"""The exporter's own health: a query of a pack that keeps failing leaves its metrics missing."""
from __future__ import annotations

from exporter.bundle.catalog.spec import BASE, AlertSpec, ValueKind, increase

GROUP = "pgvigil-exporter"

ALERTS = (
    AlertSpec(
        name="PostgresExporterQueryFailing",
        threshold="exporter_query_errors",
        group=GROUP,
        value_expr="sum without(reason) (increase(pgvigil_query_errors_total[15m]))",
        summary="A pgvigil query keeps failing",
        description="Query {query} failed {value} times in the last 15 minutes on {target} (alert above {level}); "
                    "its metrics are missing or stale.",
        scenario=increase("pgvigil_query_errors_total", {"query": "app_jobs", "reason": "error"}, 15,
                          alert_labels={**BASE, "query": "app_jobs"}),
        whole_value=True,
        kind=ValueKind.RATE,
        window=15,
        starts_at=1,
    ),
)
