"""Every pgvigil alert: its PromQL, its wording, and the test series that provoke it.

One `AlertSpec` per alert name. The numbers are not here: each spec names its entry in the
thresholds file, and the generator emits one rule per severity that entry defines. Each spec also
knows how to build promtool input series whose alert value is any chosen number (`scenario`), so
the generated tests can place the value just above and just below every level.

Descriptions are `str.format` templates: `{value}` is the alert's value (rendered with the unit's
Prometheus formatter), `{level}` the threshold level, any other field a label of the alert.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

RUNBOOK_BASE = "https://github.com/pgvigil/pgvigil/blob/main/docs/runbooks.md"
EXPORTER_JOB = "pgvigil"  # the Prometheus job that scrapes pgvigil; PostgresExporterDown watches it

# Labels every series of the test scenarios carries: Prometheus' job/instance, pgvigil's target
# label and a target constant label, so the tests prove the rules keep what they should.
BASE = {"job": EXPORTER_JOB, "instance": "pgvigil:9187", "target": "primary", "cluster": "main"}
APP_TABLE = {"datname": "app", "schemaname": "public", "relname": "orders"}


@dataclass(frozen=True)
class Scenario:
    """promtool input series (selector -> values notation) and the alert value they produce."""

    series: dict
    value: float | None
    labels: dict  # labels of the resulting alert, besides alertname and severity


@dataclass(frozen=True)
class AlertSpec:
    name: str
    threshold: str
    group: str
    value_expr: str  # compared with the level: `<value_expr> > level` (or `<` when direction is below)
    summary: str
    description: str
    scenario: Callable[..., Scenario]  # (value, minutes, eval_at, quiet) -> Scenario
    guard: str = ""  # appended after the comparison: `and ...` / `unless ...`; may use {min_rate}
    kind: str = "gauge"  # gauge: exact values; rate: computed from counters; clock: uses time()
    window: int = 0  # minutes of range data the value needs before it is exact
    starts_at: int = 0  # minute from which the scenario's condition can be true
    has_quiet_case: bool = False  # scenario(quiet=True) breaches the level under min_rate traffic
    whole_value: bool = False  # an extrapolated count from increase(): shown rounded, not humanized

    @property
    def anchor(self) -> str:
        return self.name.lower()

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_BASE}#{self.anchor}"


def selector(name: str, labels: dict) -> str:
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return f"{name}{{{inner}}}"


def constant(value: float, minutes: int) -> str:
    return f"{number(value)}+0x{minutes}"


def counter(per_minute: float, minutes: int) -> str:
    return f"0+{number(per_minute)}x{minutes}"


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _gauge(metric: str, extra: dict | None = None) -> Callable[..., Scenario]:
    """A scenario where one gauge series carries the value itself."""
    labels = {**BASE, **(extra or {})}

    def build(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
        return Scenario({selector(metric, labels): constant(value, minutes)}, value, labels)

    return build


def _connection_utilization(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    # 10000 usable connections (10003 - 3 reserved): fine enough steps for any level above 1 %
    usable = 10000
    connections = round(value * usable)
    active = connections // 2
    series = {
        selector("pg_stat_activity_count", {**BASE, "datname": "app", "state": "active"}): constant(active, minutes),
        selector("pg_stat_activity_count", {**BASE, "datname": "app", "state": "idle"}): constant(connections - active, minutes),
        selector("pg_settings_max_connections", BASE): constant(usable + 3, minutes),
        selector("pg_settings_superuser_reserved_connections", BASE): constant(3, minutes),
    }
    return Scenario(series, connections / usable, dict(BASE))


def _active_connections(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    half = int(value) // 2
    series = {
        selector("pg_stat_activity_count", {**BASE, "datname": "app", "state": "active"}): constant(value - half, minutes),
        selector("pg_stat_activity_count", {**BASE, "datname": "postgres", "state": "active"}): constant(half, minutes),
        # idle sessions are not active connections: they must not count
        selector("pg_stat_activity_count", {**BASE, "datname": "app", "state": "idle"}): constant(500, minutes),
    }
    return Scenario(series, value, dict(BASE))


def _exporter_down(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    labels = {"job": EXPORTER_JOB, "instance": BASE["instance"]}
    return Scenario({selector("up", labels): constant(value, minutes)}, None, labels)


def _flag(metric: str, extra: dict | None = None) -> Callable[..., Scenario]:
    """A 0/1 gauge (or a state) whose description carries no value."""
    gauge = _gauge(metric, extra)

    def build(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
        scenario = gauge(value, minutes)
        return Scenario(scenario.series, None, scenario.labels)

    return build


def _slow_statements(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    fast = 100
    series = {
        selector("pg_stat_statements_mean_time_seconds_gcount", BASE): constant(fast + value, minutes),
        selector("pg_stat_statements_mean_time_seconds_bucket", {**BASE, "le": "1"}): constant(fast, minutes),
        selector("pg_stat_statements_mean_time_seconds_bucket", {**BASE, "le": "+Inf"}): constant(fast + value, minutes),
    }
    return Scenario(series, value, dict(BASE))


def _database_size(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    labels = {**BASE, "datname": "app"}
    series = {
        selector("pg_database_size_bytes", labels): constant(value, minutes),
        selector("pg_database_size_bytes", {**BASE, "datname": "postgres"}): constant(8_000_000, minutes),
    }
    return Scenario(series, value, labels)


def _storage_utilization(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    allocation, small = 1e9, 8e6
    app = value * allocation - small
    series = {
        selector("pg_database_size_bytes", {**BASE, "datname": "app"}): constant(app, minutes),
        selector("pg_database_size_bytes", {**BASE, "datname": "postgres"}): constant(small, minutes),
        selector("pgvigil_storage_allocation_bytes", BASE): constant(allocation, minutes),
    }
    return Scenario(series, (app + small) / allocation, dict(BASE))


def _rollback_ratio(min_rate: float) -> Callable[..., Scenario]:
    def build(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
        # transactions per minute: well above the traffic floor, or half of it for the quiet case
        total = min_rate * 30 if quiet else max(6000.0, min_rate * 600)
        labels = {**BASE, "datid": "16384", "datname": "app"}
        series = {
            selector("pg_stat_database_xact_rollback", labels): counter(value * total, minutes),
            selector("pg_stat_database_xact_commit", labels): counter(total - value * total, minutes),
        }
        return Scenario(series, value, labels)

    return build


def _cache_hit_ratio(min_rate: float) -> Callable[..., Scenario]:
    def build(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
        total = min_rate * 30 if quiet else max(100000.0, min_rate * 600)  # block requests per minute
        labels = {**BASE, "datid": "16384", "datname": "app"}
        series = {
            selector("pg_stat_database_blks_hit", labels): counter(value * total, minutes),
            selector("pg_stat_database_blks_read", labels): counter(total - value * total, minutes),
        }
        return Scenario(series, value, dict(BASE))

    return build


def _increase(metric: str, extra: dict, window: int, alert_labels: dict | None = None) -> Callable[..., Scenario]:
    """A counter growing steadily so that its increase over `window` minutes is the value."""
    labels = {**BASE, **extra}

    def build(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
        series = {selector(metric, labels): counter(value / window, minutes)}
        return Scenario(series, value, dict(alert_labels or labels))

    return build


def _sequential_scans(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    labels = {**BASE, **APP_TABLE}
    series = {
        selector("pg_stat_user_tables_seq_scan", labels): constant(value, minutes),
        selector("pg_stat_user_tables_idx_scan", labels): constant(0, minutes),
    }
    return Scenario(series, value, labels)


def _replication_lag(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    series = {
        selector("pg_replication_lag_seconds", BASE): constant(value, minutes),
        selector("pg_replication_is_replica", BASE): constant(1, minutes),
    }
    return Scenario(series, value, dict(BASE))


def _wal_archive_failing(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    series = {
        selector("pg_stat_archiver_failed_count", BASE): counter(value / 10, minutes),
        selector("pg_stat_archiver_last_failure_age", BASE): constant(30, minutes),
        selector("pg_stat_archiver_last_archive_age", BASE): constant(600, minutes),
    }
    return Scenario(series, value, dict(BASE))


def _superuser_created(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    # two superusers until minute 5, then `value` more
    notation = f"2+0x4 {number(2 + value)}+0x{minutes - 5}"
    return Scenario({selector("pg_roles_superuser_count", BASE): notation}, value, dict(BASE))


def _vector_index_idle(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    index = {**BASE, **APP_TABLE, "relname": "documents", "indexrelname": "documents_embedding_idx", "method": "hnsw"}
    table = {**BASE, **APP_TABLE, "relname": "documents"}
    reads = 0 if quiet else 10
    series = {
        selector("pg_vector_index_scans_total", index): counter(value / 60, minutes),
        selector("pg_stat_user_tables_seq_scan", table): counter(reads, minutes),
        selector("pg_stat_user_tables_idx_scan", table): counter(reads, minutes),
    }
    return Scenario(series, value, index)


def _backup_age(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    # the last success happened `value` seconds before the evaluation time
    stamp = eval_at * 60 - value
    return Scenario(
        {selector("pgvigil_backup_last_success_timestamp_seconds", BASE): constant(stamp, minutes)}, value, dict(BASE)
    )


def _backup_never_succeeded(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    # value 1: backups configured and none succeeded; value 0: the same target with a backup
    # that succeeded an hour before the evaluation
    series = {selector("pgvigil_backup_configured", BASE): constant(1, minutes)}
    if value < 1:
        stamp = max(eval_at * 60 - 3600, 0)
        series[selector("pgvigil_backup_last_success_timestamp_seconds", BASE)] = constant(stamp, minutes)
    return Scenario(series, None, dict(BASE))


def _backup_shrunk(value: float, minutes: int, eval_at: int = 0, quiet: bool = False) -> Scenario:
    previous = 1e9
    last = value * previous
    series = {
        selector("pgvigil_backup_last_size_bytes", BASE): constant(last, minutes),
        selector("pgvigil_backup_previous_size_bytes", BASE): constant(previous, minutes),
    }
    return Scenario(series, last / previous, dict(BASE))


def catalog(min_rates: dict[str, float | None]) -> list[AlertSpec]:
    """All alerts; `min_rates` gives the traffic floors of the ratio alerts (from the thresholds)."""
    rollback_floor = min_rates.get("rollback_ratio") or 0
    cache_floor = min_rates.get("cache_hit_ratio") or 0
    return [
        # availability
        AlertSpec(
            "PostgresDown", "postgres_down", "pgvigil-availability", "pg_up",
            "PostgreSQL is unreachable",
            "pgvigil cannot connect to target {target}: every query against it fails.",
            _flag("pg_up"),
        ),
        AlertSpec(
            "PostgresExporterDown", "exporter_down", "pgvigil-availability", f'up{{job="{EXPORTER_JOB}"}}',
            "The pgvigil exporter is not being scraped",
            "Prometheus cannot scrape pgvigil at {instance}: no PostgreSQL alert can fire while it is down.",
            _exporter_down,
        ),
        # connections
        AlertSpec(
            "PostgresConnectionUtilizationHigh", "connection_utilization", "pgvigil-connections",
            "pgvigil:connection_utilization:ratio",
            "PostgreSQL connections are close to max_connections",
            "Target {target} uses {value} of its usable connections (alert above {level}).",
            _connection_utilization,
        ),
        AlertSpec(
            "PostgresActiveConnectionsHigh", "active_connections", "pgvigil-connections",
            "pgvigil:active_connections:count",
            "Many PostgreSQL sessions are running statements at once",
            "Target {target} has {value} active sessions (alert above {level}).",
            _active_connections,
        ),
        AlertSpec(
            "PostgresIdleInTransaction", "idle_in_transaction", "pgvigil-connections",
            "pg_stat_activity_max_idle_in_transaction_seconds",
            "A PostgreSQL session is idle inside an open transaction",
            "A session in database {datname} on {target} has been idle in transaction for {value} (alert above {level}).",
            _gauge("pg_stat_activity_max_idle_in_transaction_seconds", {"datname": "app"}),
        ),
        # queries
        AlertSpec(
            "PostgresLongRunningQuery", "long_running_query", "pgvigil-queries",
            "pg_stat_activity_max_query_duration_seconds",
            "A PostgreSQL query has been running for a long time",
            "The longest active query in database {datname} on {target} has run for {value} (alert above {level}).",
            _gauge("pg_stat_activity_max_query_duration_seconds", {"datname": "app"}),
        ),
        AlertSpec(
            "PostgresStatementMeanTimeHigh", "statement_mean_time", "pgvigil-queries",
            "pg_stat_statements_mean_seconds_max",
            "A PostgreSQL statement is slow on average",
            "The slowest statement in database {datname} on {target} averages {value} per call (alert above {level}).",
            _gauge("pg_stat_statements_mean_seconds_max", {"datname": "app"}),
        ),
        AlertSpec(
            "PostgresSlowStatements", "slow_statements", "pgvigil-queries",
            "pgvigil:slow_statements:count",
            "Many PostgreSQL statements average more than 1 second",
            "Target {target} has {value} statements with a mean execution time above 1s (alert above {level}).",
            _slow_statements,
        ),
        AlertSpec(
            "PostgresRollbackRatioHigh", "rollback_ratio", "pgvigil-queries",
            "pgvigil:xact_rollback:ratio_rate5m",
            "Many PostgreSQL transactions roll back",
            "{value} of transactions in database {datname} on {target} rolled back over 5 minutes (alert above {level}).",
            _rollback_ratio(rollback_floor), guard="and pgvigil:xact:rate5m > {min_rate}",
            kind="rate", window=5, starts_at=1, has_quiet_case=True,
        ),
        AlertSpec(
            "PostgresDeadlocks", "deadlocks", "pgvigil-queries",
            "increase(pg_stat_database_deadlocks[5m])",
            "PostgreSQL keeps detecting deadlocks",
            "Database {datname} on {target} had {value} deadlocks in the last 5 minutes (alert above {level}), for a sustained period.",
            _increase("pg_stat_database_deadlocks", {"datid": "16384", "datname": "app"}, 5),
            whole_value=True, kind="rate", window=5, starts_at=1,
        ),
        AlertSpec(
            "PostgresCacheHitRatioLow", "cache_hit_ratio", "pgvigil-queries",
            "pgvigil:cache_hit:ratio_rate5m",
            "PostgreSQL reads too many blocks from disk",
            "Target {target} serves only {value} of block requests from shared buffers (alert below {level}).",
            _cache_hit_ratio(cache_floor), guard="and pgvigil:blocks_requested:rate5m > {min_rate}",
            kind="rate", window=5, starts_at=1, has_quiet_case=True,
        ),
        # storage and maintenance
        AlertSpec(
            "PostgresDatabaseSizeLarge", "database_size", "pgvigil-storage",
            "pg_database_size_bytes",
            "A PostgreSQL database has grown large",
            "Database {datname} on {target} is {value} (alert above {level}).",
            _database_size,
        ),
        AlertSpec(
            "PostgresStorageUtilizationHigh", "storage_utilization", "pgvigil-storage",
            "pgvigil:storage_utilization:ratio",
            "PostgreSQL databases fill their storage allocation",
            "Databases on {target} use {value} of the storage allocation (alert above {level}).",
            _storage_utilization,
        ),
        AlertSpec(
            "PostgresDeadTuplesHigh", "dead_tuples", "pgvigil-storage",
            "pg_stat_user_tables_n_dead_tup",
            "A PostgreSQL table has many dead tuples",
            "Table {schemaname}.{relname} in database {datname} on {target} has {value} dead tuples (alert above {level}).",
            _gauge("pg_stat_user_tables_n_dead_tup", APP_TABLE),
        ),
        AlertSpec(
            "PostgresSequentialScansWithoutIndex", "sequential_scans", "pgvigil-storage",
            "pg_stat_user_tables_seq_scan",
            "A PostgreSQL table is only ever read by sequential scans",
            "Table {schemaname}.{relname} in database {datname} on {target} had {value} sequential scans and no index scan (alert above {level}).",
            _sequential_scans, guard="unless pg_stat_user_tables_idx_scan > 0",
        ),
        # replication and WAL archiving
        AlertSpec(
            "PostgresReplicationLag", "replication_lag", "pgvigil-replication",
            "pg_replication_lag_seconds",
            "A PostgreSQL replica lags behind its primary",
            "Replica {target} replays WAL {value} behind its primary (alert above {level}).",
            _replication_lag, guard="and pg_replication_is_replica == 1",
        ),
        AlertSpec(
            "PostgresReplicationSlotInactive", "replication_slot_inactive", "pgvigil-replication",
            "pg_replication_slots_active",
            "A PostgreSQL replication slot has no consumer",
            "Replication slot {slot_name} on {target} is inactive and retains WAL until its consumer returns.",
            _flag("pg_replication_slots_active", {"slot_name": "analytics", "database": "app"}),
        ),
        AlertSpec(
            "PostgresWalArchiveFailing", "wal_archive_failing", "pgvigil-replication",
            "increase(pg_stat_archiver_failed_count[10m])",
            "PostgreSQL cannot archive WAL",
            "archive_command failed {value} times in the last 10 minutes on {target}, and its latest attempt failed.",
            _wal_archive_failing,
            guard="unless pg_stat_archiver_last_archive_age < pg_stat_archiver_last_failure_age",
            whole_value=True, kind="rate", window=10, starts_at=1,
        ),
        AlertSpec(
            "PostgresWalArchiveStale", "wal_archive_age", "pgvigil-replication",
            "pg_stat_archiver_last_archive_age",
            "PostgreSQL has not archived WAL within the RPO",
            "The last WAL segment of {target} was archived {value} ago (alert above {level}).",
            _gauge("pg_stat_archiver_last_archive_age"),
        ),
        # security
        AlertSpec(
            "PostgresTablesWithoutRls", "tables_without_rls", "pgvigil-security",
            "pg_security_tables_without_rls",
            "PostgreSQL tables lack row-level security",
            "Schema {schemaname} of database {datname} on {target} has {value} tables without row-level security (alert above {level}).",
            _gauge("pg_security_tables_without_rls", {"datname": "app", "schemaname": "public"}),
        ),
        AlertSpec(
            "PostgresNewSuperuser", "superuser_created", "pgvigil-security",
            "(pg_roles_superuser_count - min_over_time(pg_roles_superuser_count[1h]))",
            "A new PostgreSQL superuser role appeared",
            "Target {target} has {value} more superuser roles than at any time in the last hour.",
            _superuser_created, starts_at=5,
        ),
        AlertSpec(
            "PostgresVectorIndexUnused", "vector_index_idle", "pgvigil-vector",
            "increase(pg_vector_index_scans_total[1h])",
            "A vector index is not used while its table is queried",
            "Vector index {indexrelname} on {schemaname}.{relname} in database {datname} on {target} was scanned {value} times in the last hour while the table was read (alert below {level}).",
            _vector_index_idle,
            guard=(
                "and ignoring(indexrelname, method) (increase(pg_stat_user_tables_seq_scan[1h])"
                " + increase(pg_stat_user_tables_idx_scan[1h])) > 0"
                " and (pg_vector_index_scans_total offset 1h)"
            ),
            whole_value=True, kind="rate", window=60, starts_at=60, has_quiet_case=True,
        ),
        # exporter health
        AlertSpec(
            "PostgresExporterQueryFailing", "exporter_query_errors", "pgvigil-exporter",
            "sum without(reason) (increase(pgvigil_query_errors_total[15m]))",
            "A pgvigil query keeps failing",
            "Query {query} failed {value} times in the last 15 minutes on {target} (alert above {level}); its metrics are missing or stale.",
            _increase("pgvigil_query_errors_total", {"query": "app_jobs", "reason": "error"}, 15,
                      alert_labels={**BASE, "query": "app_jobs"}),
            whole_value=True, kind="rate", window=15, starts_at=1,
        ),
        # backups
        AlertSpec(
            "PostgresBackupTooOld", "backup_age", "pgvigil-backups",
            "(time() - pgvigil_backup_last_success_timestamp_seconds)",
            "The last successful PostgreSQL backup is too old",
            "The last successful backup of {target} finished {value} ago (alert above {level}).",
            _backup_age, kind="clock",
        ),
        AlertSpec(
            "PostgresBackupNeverSucceeded", "backup_never_succeeded", "pgvigil-backups",
            "pgvigil_backup_configured",
            "A PostgreSQL target with backups configured has never had a successful backup",
            "pgvigil watches the backups of {target}, but none has succeeded yet: there is nothing to restore.",
            _backup_never_succeeded, guard="unless pgvigil_backup_last_success_timestamp_seconds",
        ),
        AlertSpec(
            "PostgresBackupFailed", "backup_failed", "pgvigil-backups",
            "pgvigil_backup_last_run_success",
            "The last PostgreSQL backup run failed",
            "The last backup run of {target} failed; the previous good backup keeps ageing.",
            _flag("pgvigil_backup_last_run_success"),
        ),
        AlertSpec(
            "PostgresBackupVerifyFailed", "backup_verify_failed", "pgvigil-backups",
            "pgvigil_backup_last_verify_success",
            "The last PostgreSQL backup failed its restore test",
            "The last backup of {target} did not pass verification: it may not restore.",
            _flag("pgvigil_backup_last_verify_success"),
        ),
        AlertSpec(
            "PostgresBackupEmpty", "backup_empty", "pgvigil-backups",
            "pgvigil_backup_last_size_bytes",
            "The last PostgreSQL backup is empty",
            "The last backup file of {target} is {value} long (alert below {level}).",
            _gauge("pgvigil_backup_last_size_bytes"),
        ),
        AlertSpec(
            "PostgresBackupShrunk", "backup_shrunk", "pgvigil-backups",
            "(pgvigil_backup_last_size_bytes / pgvigil_backup_previous_size_bytes)",
            "The last PostgreSQL backup is much smaller than the previous one",
            "The last backup of {target} is {value} of the previous one's size (alert below {level}).",
            _backup_shrunk,
        ),
    ]


# Recording rules: ratios and counts the alerts and dashboards share.
RECORDING_RULES = [
    ("pgvigil:connection_utilization:ratio",
     "sum without(datname, state) (pg_stat_activity_count)\n"
     "/ (pg_settings_max_connections - pg_settings_superuser_reserved_connections)"),
    ("pgvigil:active_connections:count",
     'sum without(datname, state) (pg_stat_activity_count{state="active"})'),
    ("pgvigil:slow_statements:count",
     'pg_stat_statements_mean_time_seconds_gcount\n'
     '- ignoring(le) pg_stat_statements_mean_time_seconds_bucket{le=~"1|1.0"}'),
    ("pgvigil:xact:rate5m",
     "rate(pg_stat_database_xact_commit[5m]) + rate(pg_stat_database_xact_rollback[5m])"),
    ("pgvigil:xact_rollback:ratio_rate5m",
     "rate(pg_stat_database_xact_rollback[5m])\n"
     "/ (rate(pg_stat_database_xact_commit[5m]) + rate(pg_stat_database_xact_rollback[5m]))"),
    ("pgvigil:blocks_requested:rate5m",
     "sum without(datid, datname) (rate(pg_stat_database_blks_hit[5m]) + rate(pg_stat_database_blks_read[5m]))"),
    ("pgvigil:cache_hit:ratio_rate5m",
     "sum without(datid, datname) (rate(pg_stat_database_blks_hit[5m]))\n"
     "/ sum without(datid, datname) (rate(pg_stat_database_blks_hit[5m]) + rate(pg_stat_database_blks_read[5m]))"),
    ("pgvigil:storage_utilization:ratio",
     "sum without(datname) (pg_database_size_bytes) / pgvigil_storage_allocation_bytes"),
]

# Labels that tell two alerts of the same name apart (the inhibit rules compare them).
IDENTIFYING_LABELS = [
    "alertname", "target", "instance", "datname", "schemaname", "relname", "indexrelname",
    "slot_name", "database", "query",
]
