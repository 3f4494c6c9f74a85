"""Replication and WAL archiving: replica lag, abandoned slots, slots about to lose or that lost their
WAL, failing subscriptions, an archiver that fails or falls behind."""
from __future__ import annotations

from exporter.bundle.catalog.spec import (
    BASE,
    AlertSpec,
    Case,
    Scenario,
    ValueKind,
    constant,
    counter,
    flag,
    gauge,
    selector,
)

GROUP = "pgvigil-replication"


def _replication_lag(case: Case) -> Scenario:
    series = {
        selector("pg_replication_lag_seconds", BASE): constant(case.value, case.minutes),
        selector("pg_replication_is_replica", BASE): constant(1, case.minutes),
    }
    return Scenario(series, case.value, dict(BASE))


def _wal_archive_failing(case: Case) -> Scenario:
    series = {
        selector("pg_stat_archiver_failed_count", BASE): counter(case.value / 10, case.minutes),
        selector("pg_stat_archiver_last_failure_age", BASE): constant(30, case.minutes),
        selector("pg_stat_archiver_last_archive_age", BASE): constant(600, case.minutes),
    }
    return Scenario(series, case.value, dict(BASE))


def _subscription_errors(case: Case) -> Scenario:
    labels = {**BASE, "datname": "app", "subname": "orders_sub"}
    series = {
        selector("pg_stat_subscription_stats_apply_errors_total", labels): counter(case.value / 10, case.minutes),
        selector("pg_stat_subscription_stats_sync_errors_total", labels): constant(0, case.minutes),
    }
    return Scenario(series, case.value, labels)


SLOT = {"slot_name": "analytics", "slot_type": "logical"}


ALERTS = (
    AlertSpec(
        name="PostgresReplicationLag",
        threshold="replication_lag",
        group=GROUP,
        value_expr="pg_replication_lag_seconds",
        summary="A PostgreSQL replica lags behind its primary",
        description="Replica {target} replays WAL {value} behind its primary (alert above {level}).",
        scenario=_replication_lag,
        guard="and pg_replication_is_replica == 1",
    ),
    AlertSpec(
        name="PostgresReplicationSlotInactive",
        threshold="replication_slot_inactive",
        group=GROUP,
        value_expr="pg_replication_slots_active",
        summary="A PostgreSQL replication slot has no consumer",
        description="Replication slot {slot_name} on {target} is inactive and retains WAL until its consumer returns.",
        scenario=flag("pg_replication_slots_active", {"slot_name": "analytics", "database": "app"}),
    ),
    AlertSpec(
        name="PostgresWalArchiveFailing",
        threshold="wal_archive_failing",
        group=GROUP,
        value_expr="increase(pg_stat_archiver_failed_count[10m])",
        summary="PostgreSQL cannot archive WAL",
        description="archive_command failed {value} times in the last 10 minutes on {target}, "
                    "and its latest attempt failed.",
        scenario=_wal_archive_failing,
        guard="unless pg_stat_archiver_last_archive_age < pg_stat_archiver_last_failure_age",
        whole_value=True,
        kind=ValueKind.RATE,
        window=10,
        starts_at=1,
    ),
    AlertSpec(
        name="PostgresWalArchiveStale",
        threshold="wal_archive_age",
        group=GROUP,
        value_expr="pg_stat_archiver_last_archive_age",
        summary="PostgreSQL has not archived WAL within the RPO",
        description="The last WAL segment of {target} was archived {value} ago (alert above {level}).",
        scenario=gauge("pg_stat_archiver_last_archive_age"),
    ),
    AlertSpec(
        name="PostgresReplicationSlotLosingWal",
        threshold="replication_slot_safe_wal",
        group=GROUP,
        value_expr="pg_replication_slot_safe_wal_size_bytes",
        summary="A PostgreSQL replication slot is about to lose the WAL its consumer needs",
        description="Replication slot {slot_name} on {target} can fall only {value} further behind before "
                    "max_slot_wal_keep_size invalidates it (alert below {level}).",
        scenario=gauge("pg_replication_slot_safe_wal_size_bytes", SLOT),
    ),
    AlertSpec(
        name="PostgresReplicationSlotLost",
        threshold="replication_slot_lost",
        group=GROUP,
        value_expr='pg_replication_slot_wal_status{wal_status="lost"}',
        summary="A PostgreSQL replication slot lost its WAL",
        description="Replication slot {slot_name} on {target} is lost: the WAL its consumer needs was removed, "
                    "so the replica or subscriber must be re-seeded.",
        scenario=flag("pg_replication_slot_wal_status", {**SLOT, "wal_status": "lost"}),
    ),
    AlertSpec(
        name="PostgresSubscriptionErrors",
        threshold="subscription_errors",
        group=GROUP,
        value_expr="increase(pg_stat_subscription_stats_apply_errors_total[10m])"
                   " + increase(pg_stat_subscription_stats_sync_errors_total[10m])",
        summary="A PostgreSQL logical replication subscription keeps failing",
        description="Subscription {subname} in database {datname} on {target} failed {value} times in the last "
                    "10 minutes; changes stop flowing until the error is fixed.",
        scenario=_subscription_errors,
        whole_value=True,
        kind=ValueKind.RATE,
        window=10,
        starts_at=1,
    ),
)
