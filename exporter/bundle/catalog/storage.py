"""Storage and maintenance: database sizes against the allocation, dead tuples, missing indexes, long vacuums."""
from __future__ import annotations

from exporter.bundle.catalog.spec import APP_TABLE, BASE, AlertSpec, Case, Scenario, constant, gauge, selector

GROUP = "pgvigil-storage"


def _database_size(case: Case) -> Scenario:
    labels = {**BASE, "datname": "app"}
    series = {
        selector("pg_database_size_bytes", labels): constant(case.value, case.minutes),
        selector("pg_database_size_bytes", {**BASE, "datname": "postgres"}): constant(8_000_000, case.minutes),
    }
    return Scenario(series, case.value, labels)


def _storage_utilization(case: Case) -> Scenario:
    allocation, small = 1e9, 8e6
    app = case.value * allocation - small
    series = {
        selector("pg_database_size_bytes", {**BASE, "datname": "app"}): constant(app, case.minutes),
        selector("pg_database_size_bytes", {**BASE, "datname": "postgres"}): constant(small, case.minutes),
        selector("pgvigil_storage_allocation_bytes", BASE): constant(allocation, case.minutes),
    }
    return Scenario(series, (app + small) / allocation, dict(BASE))


def _sequential_scans(case: Case) -> Scenario:
    labels = {**BASE, **APP_TABLE}
    series = {
        selector("pg_stat_user_tables_seq_scan", labels): constant(case.value, case.minutes),
        selector("pg_stat_user_tables_idx_scan", labels): constant(0, case.minutes),
    }
    return Scenario(series, case.value, labels)


ALERTS = (
    AlertSpec(
        name="PostgresDatabaseSizeLarge",
        threshold="database_size",
        group=GROUP,
        value_expr="pg_database_size_bytes",
        summary="A PostgreSQL database has grown large",
        description="Database {datname} on {target} is {value} (alert above {level}).",
        scenario=_database_size,
    ),
    AlertSpec(
        name="PostgresStorageUtilizationHigh",
        threshold="storage_utilization",
        group=GROUP,
        value_expr="pgvigil:storage_utilization:ratio",
        summary="PostgreSQL databases fill their storage allocation",
        description="Databases on {target} use {value} of the storage allocation (alert above {level}).",
        scenario=_storage_utilization,
    ),
    AlertSpec(
        name="PostgresDeadTuplesHigh",
        threshold="dead_tuples",
        group=GROUP,
        value_expr="pg_stat_user_tables_n_dead_tup",
        summary="A PostgreSQL table has many dead tuples",
        description="Table {schemaname}.{relname} in database {datname} on {target} has {value} dead tuples "
                    "(alert above {level}).",
        scenario=gauge("pg_stat_user_tables_n_dead_tup", APP_TABLE),
    ),
    AlertSpec(
        name="PostgresSequentialScansWithoutIndex",
        threshold="sequential_scans",
        group=GROUP,
        value_expr="pg_stat_user_tables_seq_scan",
        summary="A PostgreSQL table is only ever read by sequential scans",
        description="Table {schemaname}.{relname} in database {datname} on {target} had {value} sequential scans "
                    "and no index scan (alert above {level}).",
        scenario=_sequential_scans,
        guard="unless pg_stat_user_tables_idx_scan > 0",
    ),
    AlertSpec(
        name="PostgresVacuumRunningLong",
        threshold="vacuum_duration",
        group=GROUP,
        value_expr="pg_stat_progress_vacuum_duration_seconds",
        summary="A PostgreSQL VACUUM has been running for a long time",
        description="VACUUM of {relname} in database {datname} on {target} has been running for {value} "
                    "(alert above {level}).",
        scenario=gauge("pg_stat_progress_vacuum_duration_seconds", {"datname": "app", "relname": "public.orders"}),
    ),
)
