"""Vector search: a pgvector index nobody uses while its table is read."""
from __future__ import annotations

from exporter.bundle.catalog.spec import APP_TABLE, BASE, AlertSpec, Case, Scenario, ValueKind, counter, selector

GROUP = "pgvigil-vector"


def _vector_index_idle(case: Case) -> Scenario:
    index = {**BASE, **APP_TABLE, "relname": "documents", "indexrelname": "documents_embedding_idx", "method": "hnsw"}
    table = {**BASE, **APP_TABLE, "relname": "documents"}
    reads = 0 if case.quiet else 10
    series = {
        selector("pg_vector_index_scans_total", index): counter(case.value / 60, case.minutes),
        selector("pg_stat_user_tables_seq_scan", table): counter(reads, case.minutes),
        selector("pg_stat_user_tables_idx_scan", table): counter(reads, case.minutes),
    }
    return Scenario(series, case.value, index)


ALERTS = (
    AlertSpec(
        name="PostgresVectorIndexUnused",
        threshold="vector_index_idle",
        group=GROUP,
        value_expr="increase(pg_vector_index_scans_total[1h])",
        summary="A vector index is not used while its table is queried",
        description="Vector index {indexrelname} on {schemaname}.{relname} in database {datname} on {target} "
                    "was scanned {value} times in the last hour while the table was read (alert below {level}).",
        scenario=_vector_index_idle,
        guard=(
            "and ignoring(indexrelname, method) (increase(pg_stat_user_tables_seq_scan[1h])"
            " + increase(pg_stat_user_tables_idx_scan[1h])) > 0"
            " and (pg_vector_index_scans_total offset 1h)"
        ),
        whole_value=True,
        kind=ValueKind.RATE,
        window=60,
        starts_at=60,
        has_quiet_case=True,
    ),
)
