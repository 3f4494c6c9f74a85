"""PostgreSQL Replication, WAL and Backups: replica lag, slots and their WAL safety, logical
subscriptions, WAL generation and archiving against the RPO, backups."""
from __future__ import annotations

from exporter.bundle.dashboards.panels import PanelBuilder, PanelFn, T
from exporter.bundle.grafana import Bands, Dashboard, Panel, Query

BACKUP = "pgvigil_backup_"


def headline(p: PanelFn) -> tuple[Panel, ...]:
    """One row of stats: role, replication lag, WAL archive age, last backup age."""
    return (
        p("Server role", "stat", [Query(f"pg_replication_is_replica{{{T}}}", "{{target}}")], "none",
          "Primary or replica.", width=6, height=4,
          mappings=(("0", "Primary", "green"), ("1", "Replica", "blue"))),
        p("Replication lag now", "stat",
          [Query(f"max by (target) (pg_replication_lag_seconds{{{T}}})", "{{target}}")], "s",
          "Replay lag of a replica; 0 on a primary.", "replication_lag", width=6, height=4),
        p("WAL archive age", "stat", [Query(f"pg_stat_archiver_last_archive_age{{{T}}}", "{{target}}")], "s",
          "Time since the last WAL segment was archived: the data you would lose (RPO).", "wal_archive_age",
          width=6, height=4),
        p("Last backup age", "stat",
          [Query(f"time() - {BACKUP}last_success_timestamp_seconds{{{T}}}", "{{target}}")], "s",
          "Time since the last successful backup.", "backup_age", width=6, height=4),
    )


def replication_and_wal(p: PanelFn) -> tuple[Panel, ...]:
    """Replica lag, replication slots and the WAL they retain, WAL archiving."""
    return (
        p("Replication lag", "timeseries", [Query(f"pg_replication_lag_seconds{{{T}}}", "{{target}}")], "s",
          "Replay lag of a replica; 0 on a primary.", "replication_lag", minimum=0),
        p("Replica WAL lag", "timeseries", [Query(
            f"pg_stat_replication_pg_wal_lsn_diff{{{T}}}", "{{target}} {{application_name}} {{client_addr}}")],
          "bytes", "Bytes of WAL each connected replica has not replayed yet.", minimum=0),
        p("Replication slots active", "timeseries",
          [Query(f"pg_replication_slots_active{{{T}}}", "{{target}} {{slot_name}}")], "none",
          "Whether a consumer is connected to each slot; an inactive slot retains WAL forever.",
          mappings=(("0", "inactive", "orange"), ("1", "active", "green"))),
        p("WAL retained by slots", "timeseries",
          [Query(f"pg_replication_slots_retained_bytes{{{T}}}", "{{target}} {{slot_name}}")], "bytes",
          "WAL kept on disk for each slot; it fills the disk when a consumer is gone.", minimum=0),
        p("WAL archive age against the RPO", "timeseries",
          [Query(f"pg_stat_archiver_last_archive_age{{{T}}}", "{{target}}")], "s",
          "Time since the last archived WAL segment; bands are the RPO alert levels.", "wal_archive_age",
          minimum=0),
        p("WAL archiving", "timeseries", [
            Query(f"increase(pg_stat_archiver_archived_count{{{T}}}[$__rate_interval])", "{{target}} archived"),
            Query(f"increase(pg_stat_archiver_failed_count{{{T}}}[$__rate_interval])", "{{target}} failed"),
        ], "short", "WAL segments archived and archive_command failures per interval.", minimum=0),
    )


SUBSCRIPTION_LEGEND = "{{target}} {{datname}}.{{subname}}"
SLOT_LEGEND = "{{target}} {{slot_name}}"


def slots_and_subscriptions(p: PanelFn) -> tuple[Panel, ...]:
    """How far each slot may still fall behind, its WAL status, subscription errors and freshness, WAL volume."""
    return (
        p("Slot WAL safety", "timeseries",
          [Query(f"pg_replication_slot_safe_wal_size_bytes{{{T}}}", SLOT_LEGEND)], "bytes",
          "WAL that can still be written before max_slot_wal_keep_size invalidates each slot "
          "(absent while it is unlimited); bands are the alert levels.", "replication_slot_safe_wal", minimum=0),
        p("Slot WAL status", "table",
          [Query(f"pg_replication_slot_wal_status{{{T}}} == 1", SLOT_LEGEND + " {{slot_type}} {{wal_status}}")],
          "none", "reserved or extended is fine; unreserved is lost at the next checkpoint unless the consumer "
                  "catches up; lost needs a re-seeded consumer."),
        p("Subscription errors", "timeseries", [Query(
            f"increase(pg_stat_subscription_stats_apply_errors_total{{{T}}}[$__rate_interval])"
            f" + increase(pg_stat_subscription_stats_sync_errors_total{{{T}}}[$__rate_interval])",
            SUBSCRIPTION_LEGEND)], "short",
          "Apply and initial-sync errors of each logical replication subscription per interval (PostgreSQL 15+).",
          "subscription_errors", minimum=0),
        p("Time since the publisher was heard", "timeseries",
          [Query(f"pg_stat_subscription_last_msg_receipt_age_seconds{{{T}}}", SUBSCRIPTION_LEGEND)], "s",
          "Age of the last message each subscription received; it grows while the publisher or the worker is "
          "down.", minimum=0),
        p("WAL generated", "timeseries",
          [Query(f"rate(pg_stat_wal_bytes_total{{{T}}}[$__rate_interval])", "{{target}}")], "Bps",
          "WAL written per second (pg_stat_wal, PostgreSQL 14+): what replicas, slots and the archive must keep "
          "up with.", minimum=0),
    )


def backups(p: PanelFn) -> tuple[Panel, ...]:
    """Backup age, size, duration, results and failures."""
    return (
        p("Backup age", "timeseries",
          [Query(f"time() - {BACKUP}last_success_timestamp_seconds{{{T}}}", "{{target}}")], "s",
          "Time since the last successful backup.", "backup_age", minimum=0),
        p("Backup size", "timeseries", [
            Query(f"{BACKUP}last_size_bytes{{{T}}}", "{{target}} last"),
            Query(f"{BACKUP}previous_size_bytes{{{T}}}", "{{target}} previous"),
        ], "bytes", "Size of the last backup next to the one before: a sudden drop deserves a look.",
          minimum=0),
        p("Backup duration", "timeseries",
          [Query(f"{BACKUP}last_duration_seconds{{{T}}}", "{{target}}")], "s",
          "How long the last backup took.", minimum=0),
        p("Backup and verification result", "stat", [
            Query(f"{BACKUP}last_run_success{{{T}}}", "{{target}} backup"),
            Query(f"{BACKUP}last_verify_success{{{T}}}", "{{target}} verify"),
        ], "none", "Whether the last backup and the last restore test succeeded.",
          bands=Bands((("red", None), ("green", 1.0))), mappings=(("0", "Failed", "red"), ("1", "OK", "green"))),
        p("Backup failures", "timeseries",
          [Query(f"increase({BACKUP}failures_total{{{T}}}[$__rate_interval])", "{{target}}")], "short",
          "Failed backup runs per interval.", minimum=0),
    )


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard, its bands from the thresholds `builder` holds."""
    p = builder.panel
    panels = headline(p) + replication_and_wal(p) + slots_and_subscriptions(p) + backups(p)
    return Dashboard("pgvigil-replication", "PostgreSQL Replication, WAL and Backups",
                     "Replica lag, replication slots and their WAL safety, logical subscriptions, WAL generation "
                     "and archiving against the RPO, backups.", panels)
