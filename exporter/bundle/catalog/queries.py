"""Queries: long and slow statements, rollbacks, deadlocks and the buffer cache."""
from __future__ import annotations

from exporter.bundle.catalog.spec import (
    APP_DATABASE,
    BASE,
    AlertSpec,
    Case,
    Scenario,
    ValueKind,
    constant,
    counter,
    gauge,
    increase,
    selector,
)

GROUP = "pgvigil-queries"


def _slow_statements(case: Case) -> Scenario:
    fast, value, minutes = 100, case.value, case.minutes
    series = {
        selector("pg_stat_statements_mean_time_seconds_gcount", BASE): constant(fast + value, minutes),
        selector("pg_stat_statements_mean_time_seconds_bucket", {**BASE, "le": "1"}): constant(fast, minutes),
        selector("pg_stat_statements_mean_time_seconds_bucket", {**BASE, "le": "+Inf"}):
            constant(fast + value, minutes),
    }
    return Scenario(series, value, dict(BASE))


def _rollback_ratio(case: Case) -> Scenario:
    # transactions per minute: well above the traffic floor, or half of it for the quiet case
    total = case.min_rate * 30 if case.quiet else max(6000.0, case.min_rate * 600)
    labels = {**BASE, **APP_DATABASE}
    series = {
        selector("pg_stat_database_xact_rollback", labels): counter(case.value * total, case.minutes),
        selector("pg_stat_database_xact_commit", labels): counter(total - case.value * total, case.minutes),
    }
    return Scenario(series, case.value, labels)


def _cache_hit_ratio(case: Case) -> Scenario:
    # block requests per minute: well above the traffic floor, or half of it for the quiet case
    total = case.min_rate * 30 if case.quiet else max(100000.0, case.min_rate * 600)
    labels = {**BASE, **APP_DATABASE}
    series = {
        selector("pg_stat_database_blks_hit", labels): counter(case.value * total, case.minutes),
        selector("pg_stat_database_blks_read", labels): counter(total - case.value * total, case.minutes),
    }
    return Scenario(series, case.value, dict(BASE))


ALERTS = (
    AlertSpec(
        name="PostgresLongRunningQuery",
        threshold="long_running_query",
        group=GROUP,
        value_expr="pg_stat_activity_max_query_duration_seconds",
        summary="A PostgreSQL query has been running for a long time",
        description="The longest active query in database {datname} on {target} has run for {value} "
                    "(alert above {level}).",
        scenario=gauge("pg_stat_activity_max_query_duration_seconds", {"datname": "app"}),
    ),
    AlertSpec(
        name="PostgresStatementMeanTimeHigh",
        threshold="statement_mean_time",
        group=GROUP,
        value_expr="pg_stat_statements_mean_seconds_max",
        summary="A PostgreSQL statement is slow on average",
        description="The slowest statement in database {datname} on {target} averages {value} per call "
                    "(alert above {level}).",
        scenario=gauge("pg_stat_statements_mean_seconds_max", {"datname": "app"}),
    ),
    AlertSpec(
        name="PostgresSlowStatements",
        threshold="slow_statements",
        group=GROUP,
        value_expr="pgvigil:slow_statements:count",
        summary="Many PostgreSQL statements average more than 1 second",
        description="Target {target} has {value} statements with a mean execution time above 1s "
                    "(alert above {level}).",
        scenario=_slow_statements,
    ),
    AlertSpec(
        name="PostgresRollbackRatioHigh",
        threshold="rollback_ratio",
        group=GROUP,
        value_expr="pgvigil:xact_rollback:ratio_rate5m",
        summary="Many PostgreSQL transactions roll back",
        description="{value} of transactions in database {datname} on {target} rolled back over 5 minutes "
                    "(alert above {level}).",
        scenario=_rollback_ratio,
        guard="and pgvigil:xact:rate5m > {min_rate}",
        kind=ValueKind.RATE,
        window=5,
        starts_at=1,
        has_quiet_case=True,
    ),
    AlertSpec(
        name="PostgresDeadlocks",
        threshold="deadlocks",
        group=GROUP,
        value_expr="increase(pg_stat_database_deadlocks[5m])",
        summary="PostgreSQL keeps detecting deadlocks",
        description="Database {datname} on {target} had {value} deadlocks in the last 5 minutes "
                    "(alert above {level}), for a sustained period.",
        scenario=increase("pg_stat_database_deadlocks", APP_DATABASE, 5),
        whole_value=True,
        kind=ValueKind.RATE,
        window=5,
        starts_at=1,
    ),
    AlertSpec(
        name="PostgresCacheHitRatioLow",
        threshold="cache_hit_ratio",
        group=GROUP,
        value_expr="pgvigil:cache_hit:ratio_rate5m",
        summary="PostgreSQL reads too many blocks from disk",
        description="Target {target} serves only {value} of block requests from shared buffers "
                    "(alert below {level}).",
        scenario=_cache_hit_ratio,
        guard="and pgvigil:blocks_requested:rate5m > {min_rate}",
        kind=ValueKind.RATE,
        window=5,
        starts_at=1,
        has_quiet_case=True,
    ),
)
