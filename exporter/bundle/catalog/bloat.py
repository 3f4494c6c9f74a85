"""Bloat: tables and btree indexes whose estimated wasted space is both a large share and many bytes.

The value is the estimated wasted ratio (the bloat pack, docs/bloat.md); the threshold's `min_bytes`
keeps small relations quiet, where a high ratio costs nothing worth a rewrite's lock.
"""
from __future__ import annotations

from exporter.bundle.catalog.spec import APP_TABLE, BASE, AlertSpec, Case, Scenario, constant, selector

GROUP = "pgvigil-bloat"
APP_INDEX = {**APP_TABLE, "indexrelname": "orders_pkey"}


def _bloat(kind: str, labels: dict[str, str]):
    def build(case: Case) -> Scenario:
        full = {**BASE, **labels}
        # over the floor by a margin, or (quiet) just under it with the same ratio
        wasted = case.min_bytes * 0.9 if case.quiet else max(case.min_bytes * 2, 1e6)
        series = {
            selector(f"pg_bloat_{kind}_wasted_ratio", full): constant(case.value, case.minutes),
            selector(f"pg_bloat_{kind}_wasted_bytes", full): constant(wasted, case.minutes),
        }
        return Scenario(series, case.value, full)

    return build


ALERTS = (
    AlertSpec(
        name="PostgresTableBloatHigh",
        threshold="table_bloat",
        group=GROUP,
        value_expr="pg_bloat_table_wasted_ratio",
        summary="A PostgreSQL table wastes much of its space",
        description="Table {schemaname}.{relname} in database {datname} on {target} is an estimated {value} wasted "
                    "space (alert above {level}, on tables wasting more than the threshold's min_bytes).",
        scenario=_bloat("table", APP_TABLE),
        guard="and pg_bloat_table_wasted_bytes > {min_bytes}",
        has_quiet_case=True,
    ),
    AlertSpec(
        name="PostgresIndexBloatHigh",
        threshold="index_bloat",
        group=GROUP,
        value_expr="pg_bloat_index_wasted_ratio",
        summary="A PostgreSQL index wastes much of its space",
        description="Index {schemaname}.{indexrelname} of table {relname} in database {datname} on {target} is an "
                    "estimated {value} wasted space (alert above {level}, on indexes wasting more than the "
                    "threshold's min_bytes).",
        scenario=_bloat("index", APP_INDEX),
        guard="and pg_bloat_index_wasted_bytes > {min_bytes}",
        has_quiet_case=True,
    ),
)
