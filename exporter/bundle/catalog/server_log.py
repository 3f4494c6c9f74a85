"""The server log (exporter/serverlog, docs/logs.md): brute-force logins, error spikes, crashes, checkpoints.

Deadlocks are alerted on from pg_stat_database already (queries.PostgresDeadlocks, which needs no log);
the log's `pg_log_deadlocks_total` feeds the dashboards.
"""
from __future__ import annotations

from exporter.bundle.catalog.spec import BASE, AlertSpec, Case, Scenario, ValueKind, counter, increase, selector

GROUP = "pgvigil-server-log"


def _failed_logins(case: Case) -> Scenario:
    # one user's failures split over two methods: the rule must sum them per user
    labels = {**BASE, "user": "alice", "database": "app"}
    per_minute = case.value / 15
    series = {
        selector("pg_log_authentication_failures_total", {**labels, "method": "password"}):
            counter(per_minute / 2, case.minutes),
        selector("pg_log_authentication_failures_total", {**labels, "method": "no_hba_entry"}):
            counter(per_minute / 2, case.minutes),
    }
    return Scenario(series, case.value, {**BASE, "user": "alice"})


def _error_rate(case: Case) -> Scenario:
    # ERROR entries per minute over 5 minutes, split over two codes
    labels = {**BASE, "severity": "ERROR"}
    series = {
        selector("pg_log_messages_total", {**labels, "sqlstate": "23505"}): counter(case.value / 2, case.minutes),
        selector("pg_log_messages_total", {**labels, "sqlstate": "42P01"}): counter(case.value / 2, case.minutes),
        selector("pg_log_messages_total", {**BASE, "severity": "LOG", "sqlstate": "00000"}):
            counter(1000, case.minutes),
    }
    return Scenario(series, case.value, {**BASE, "severity": "ERROR"})


def _crash(case: Case) -> Scenario:
    # PANICs and crash recoveries together: the value is their sum over 15 minutes
    series = {
        selector("pg_log_panics_total", BASE): counter(case.value / 15 / 2, case.minutes),
        selector("pg_log_crash_recoveries_total", BASE): counter(case.value / 15 / 2, case.minutes),
    }
    return Scenario(series, case.value, dict(BASE))


ALERTS = (
    AlertSpec(
        name="PostgresLoginBruteForce",
        threshold="failed_logins_per_user",
        group=GROUP,
        value_expr="sum without(database, method, client_network) "
                   "(increase(pg_log_authentication_failures_total[15m]))",
        summary="Many failed logins for one PostgreSQL user",
        description="User {user} failed to log in {value} times in the last 15 minutes on {target} (alert above "
                    "{level}): a password guessing attempt, or a client with a stale password.",
        scenario=_failed_logins,
        whole_value=True,
        kind=ValueKind.RATE,
        window=15,
        starts_at=1,
    ),
    AlertSpec(
        name="PostgresLogErrorRateHigh",
        threshold="log_error_rate",
        group=GROUP,
        value_expr='sum without(sqlstate) (rate(pg_log_messages_total{severity=~"ERROR|FATAL"}[5m])) * 60',
        summary="PostgreSQL logs many errors",
        description="Target {target} logged {value} {severity} entries per minute over the last 5 minutes "
                    "(alert above {level}).",
        scenario=_error_rate,
        kind=ValueKind.RATE,
        window=5,
        starts_at=1,
    ),
    AlertSpec(
        name="PostgresCrashed",
        threshold="server_crash",
        group=GROUP,
        value_expr="increase(pg_log_panics_total[15m]) + increase(pg_log_crash_recoveries_total[15m])",
        summary="PostgreSQL crashed (PANIC or crash recovery)",
        description="Target {target} logged {value} PANIC entries or crash recovery starts in the last 15 minutes.",
        scenario=_crash,
        whole_value=True,
        kind=ValueKind.RATE,
        window=15,
        starts_at=1,
    ),
    AlertSpec(
        name="PostgresCheckpointsTooFrequent",
        threshold="checkpoints_too_frequent",
        group=GROUP,
        value_expr="increase(pg_log_checkpoints_too_frequent_total[1h])",
        summary="PostgreSQL checkpoints occur too frequently",
        description="Target {target} logged {value} 'checkpoints are occurring too frequently' warnings in the "
                    "last hour (alert above {level}).",
        scenario=increase("pg_log_checkpoints_too_frequent_total", {}, 60),
        whole_value=True,
        kind=ValueKind.RATE,
        window=60,
        starts_at=1,
    ),
)
