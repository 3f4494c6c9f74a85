"""promtool unit tests generated from the same thresholds as the rules, so they move together.

For every alert and each of its severities the tests place the alert's value just past the level
(it fires after its `for:` duration, and is still pending one minute before) and just short of it
(silent). Ratio alerts with a traffic floor also get a quiet case: a bad ratio on too little
traffic stays silent. A last test feeds the series of a healthy, lightly loaded database and
expects no alert at all.
"""
from __future__ import annotations

import re

from exporter.bundle.catalog import (
    BASE,
    EXPORTER_JOB,
    RUNBOOK_BASE,
    AlertSpec,
    Case,
    Scenario,
    ValueKind,
    constant,
    counter,
    monitoring,
    selector,
    session_series,
)
from exporter.bundle.humanize import format_level
from exporter.bundle.rules import alert_specs, render_description
from exporter.bundle.thresholds import Threshold

RULE_FILES = ["../pgvigil-rules.yml", "../pgvigil-alerts.yml"]
_INTEGRAL_UNITS = ("count", "boolean", "bytes")


def duration_minutes(duration: str) -> int:
    """A Prometheus duration rounded up to whole minutes (the tests evaluate once a minute)."""
    scale = {"ms": 0.001 / 60, "s": 1 / 60, "m": 1, "h": 60, "d": 1440, "w": 10080, "y": 525600}
    total = sum(int(amount) * scale[unit] for amount, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))
    return int(-(-total // 1))


def step(threshold: Threshold, level: float) -> float:
    """How far "just above/below" a level is: one unit for whole quantities, else 1 %."""
    if threshold.unit in _INTEGRAL_UNITS:
        return 1
    return abs(level) * 0.01 or 0.01


def breaching_value(spec: AlertSpec, threshold: Threshold, level: float) -> float:
    """The value just past the level: one step, or for an age growing with time() the level plus
    the `for:` duration and two minutes (it crossed the level `for:` + 2 minutes before eval)."""
    if spec.kind is ValueKind.CLOCK:
        return level + (duration_minutes(threshold.for_) + 2) * 60
    delta = step(threshold, level)
    return level - delta if threshold.direction == "below" else level + delta


def safe_value(spec: AlertSpec, threshold: Threshold, level: float) -> float:
    """The closest value that must not fire: the level itself where values are exact."""
    if spec.kind is ValueKind.CLOCK:
        return level - 60  # an age one minute short of the level at evaluation time
    if spec.kind is ValueKind.GAUGE and threshold.unit in _INTEGRAL_UNITS:
        return level
    delta = step(threshold, level)
    if threshold.direction == "below":
        return level + delta
    return max(level - delta, 0.0)


def unit_test_groups(thresholds: dict[str, Threshold]) -> list[dict]:
    """Every generated test case, one promtool test group each."""
    groups = []
    for spec in alert_specs(thresholds):
        threshold = thresholds[spec.threshold]
        levels = threshold.levels()
        for severity, level in levels.items():
            groups.append(_case(spec, threshold, f"{severity} fires just past {_shown(threshold, level)}",
                                breaching_value(spec, threshold, level), pending_check=True))
            groups.append(_case(spec, threshold, f"{severity} silent just short of {_shown(threshold, level)}",
                                safe_value(spec, threshold, level)))
        if spec.has_quiet_case:
            worst = list(levels.values())[-1]
            groups.append(_case(spec, threshold, "silent on too little traffic",
                                breaching_value(spec, threshold, worst), quiet=True))
    groups.append(healthy_group(thresholds))
    groups.append(monitoring.watchdog_test(f"{RUNBOOK_BASE}#{monitoring.WATCHDOG.lower()}"))
    return groups


def unit_test_file(thresholds: dict[str, Threshold]) -> dict:
    """The content of alerts/tests/pgvigil-alerts.test.yml."""
    return {"rule_files": RULE_FILES, "evaluation_interval": "1m", "tests": unit_test_groups(thresholds)}


def _case(spec: AlertSpec, threshold: Threshold, title: str, value: float,
          pending_check: bool = False, quiet: bool = False) -> dict:
    for_minutes = duration_minutes(threshold.for_)
    if spec.kind is ValueKind.CLOCK:
        eval_at = for_minutes + 30  # any time: the scenario places the backup relative to it
    else:
        # counters' increase only reaches the scenario value once the window is full
        eval_at = max(spec.starts_at, spec.window) + for_minutes + 1
    minutes = eval_at + 5
    scenario = spec.scenario(Case(value, minutes, eval_at=eval_at, quiet=quiet, min_rate=threshold.min_rate or 0,
                                  min_bytes=threshold.min_bytes or 0))
    expected = [] if quiet else [
        _expected_alert(spec, threshold, severity, level, scenario.labels, scenario.value)
        for severity, level in threshold.levels().items()
        if threshold.breaches(value, level)
    ]
    checks = []
    if pending_check and for_minutes >= 1:
        # one minute before `for:` has elapsed since the condition could first be true: still pending
        if spec.kind is ValueKind.CLOCK:
            pending_at = eval_at - 2
            early = _clock_alerts(spec, threshold, scenario, value, eval_at, pending_at, for_minutes)
        else:
            pending_at, early = spec.starts_at + for_minutes - 1, []
        checks.append({"eval_time": f"{pending_at}m", "alertname": spec.name, "exp_alerts": early})
    checks.append({"eval_time": f"{eval_at}m", "alertname": spec.name, "exp_alerts": expected})
    return {
        "name": f"{spec.name} {title}",
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in scenario.series.items()],
        "alert_rule_test": checks,
    }


def _clock_alerts(spec: AlertSpec, threshold: Threshold, scenario: Scenario, value: float,
                  eval_at: int, minute: int, for_minutes: int) -> list[dict]:
    """Alerts firing at `minute` for an age that is `value` at `eval_at` and grows 60 s a minute:
    a lower level crossed long before may already fire while the tested one is still pending."""
    age = value - (eval_at - minute) * 60
    firing = []
    for severity, level in threshold.levels().items():
        crossed = next((m for m in range(minute + 1) if value - (eval_at - m) * 60 > level), None)
        if crossed is not None and minute - crossed >= for_minutes:
            firing.append(_expected_alert(spec, threshold, severity, level, scenario.labels, age))
    return firing


def _expected_alert(spec: AlertSpec, threshold: Threshold, severity: str, level: float,
                    labels: dict, value: float | None) -> dict:
    return {
        "exp_labels": {**labels, "severity": severity},
        "exp_annotations": {
            "summary": spec.summary,
            "description": render_description(spec, threshold, level, labels, value),
            "runbook_url": spec.runbook_url,
        },
    }


def _shown(threshold: Threshold, level: float) -> str:
    return format_level(level, threshold.unit)


# A small, healthy database over 90 minutes: about a dozen connections, fast statements, a 99 %
# cache hit ratio, a few rollbacks, fresh backups, an archiver that keeps up, a used vector index,
# a slot with room to spare, a subscription without errors, a short vacuum.
HEALTHY_MINUTES = 90
_DB = {**BASE, "datid": "16384", "datname": "app"}
_TABLE = {**BASE, "datname": "app", "schemaname": "public", "relname": "orders"}
_DOCS = {**_TABLE, "relname": "documents"}
_VECTOR = {**_DOCS, "indexrelname": "documents_embedding_idx", "method": "hnsw"}
_SLOT = {**BASE, "slot_name": "standby1", "slot_type": "physical"}
_SUB = {**BASE, "datname": "app", "subname": "orders_sub"}


def healthy_series() -> dict[str, str]:
    n = HEALTHY_MINUTES
    return {
        selector("up", {"job": EXPORTER_JOB, "instance": BASE["instance"]}): constant(1, n),
        selector("pg_up", BASE): constant(1, n),
        selector("pg_settings_max_connections", BASE): constant(100, n),
        selector("pg_settings_superuser_reserved_connections", BASE): constant(3, n),
        **session_series("app", "active", 3, n),
        **session_series("app", "idle", 9, n),
        selector("pg_stat_activity_max_query_duration_seconds", {**BASE, "datname": "app"}): constant(0.2, n),
        selector("pg_stat_activity_max_idle_in_transaction_seconds", {**BASE, "datname": "app"}): constant(0, n),
        selector("pg_stat_statements_mean_seconds_max", {**BASE, "datname": "app"}): constant(0.04, n),
        selector("pg_stat_statements_mean_time_seconds_gcount", BASE): constant(120, n),
        selector("pg_stat_statements_mean_time_seconds_bucket", {**BASE, "le": "1"}): constant(119, n),
        selector("pg_stat_statements_mean_time_seconds_bucket", {**BASE, "le": "+Inf"}): constant(120, n),
        selector("pg_database_size_bytes", {**BASE, "datname": "app"}): constant(250_000_000, n),
        selector("pg_database_size_bytes", {**BASE, "datname": "postgres"}): constant(7_500_000, n),
        selector("pgvigil_storage_allocation_bytes", BASE): constant(8_000_000_000, n),
        selector("pg_stat_database_xact_commit", _DB): counter(1200, n),
        selector("pg_stat_database_xact_rollback", _DB): counter(6, n),
        selector("pg_stat_database_deadlocks", _DB): constant(0, n),
        selector("pg_stat_database_blks_hit", _DB): counter(59_400, n),
        selector("pg_stat_database_blks_read", _DB): counter(600, n),
        selector("pg_stat_user_tables_n_dead_tup", _TABLE): constant(850, n),
        selector("pg_stat_user_tables_seq_scan", _TABLE): counter(2, n),
        selector("pg_stat_user_tables_idx_scan", _TABLE): counter(400, n),
        selector("pg_stat_user_tables_seq_scan", _DOCS): counter(1, n),
        selector("pg_stat_user_tables_idx_scan", _DOCS): counter(30, n),
        selector("pg_vector_index_scans_total", _VECTOR): counter(25, n),
        selector("pg_vector_search_calls_total", {**BASE, "datname": "app"}): counter(30, n),
        selector("pg_vector_search_seconds_total", {**BASE, "datname": "app"}): counter(0.6, n),
        selector("pg_stat_progress_vacuum_duration_seconds", {**BASE, "datname": "app", "relname": "orders"}):
            constant(95, n),
        selector("pg_replication_is_replica", BASE): constant(0, n),
        selector("pg_replication_slots_active", {**BASE, "slot_name": "standby1", "database": ""}): constant(1, n),
        selector("pg_replication_slot_safe_wal_size_bytes", {**_SLOT}): constant(4_000_000_000, n),
        selector("pg_replication_slot_wal_status", {**_SLOT, "wal_status": "reserved"}): constant(1, n),
        selector("pg_stat_subscription_stats_apply_errors_total", _SUB): constant(0, n),
        selector("pg_stat_subscription_stats_sync_errors_total", _SUB): constant(0, n),
        selector("pg_stat_archiver_archived_count", BASE): counter(1, n),
        selector("pg_stat_archiver_failed_count", BASE): constant(0, n),
        selector("pg_stat_archiver_last_archive_age", BASE): constant(45, n),
        selector("pg_security_tables_without_rls", {**BASE, "datname": "app", "schemaname": "public"}): constant(0, n),
        selector("pg_roles_superuser_count", BASE): constant(1, n),
        selector("pgvigil_query_errors_total", {**BASE, "query": "app_jobs", "reason": "timeout"}): constant(1, n),
        # a nightly backup that finished 20 minutes into the test window
        selector("pgvigil_backup_configured", BASE): constant(1, n),
        selector("pgvigil_backup_last_success_timestamp_seconds", BASE): constant(1200, n),
        selector("pgvigil_backup_last_run_success", BASE): constant(1, n),
        selector("pgvigil_backup_last_verify_success", BASE): constant(1, n),
        selector("pgvigil_backup_last_size_bytes", BASE): constant(52_000_000, n),
        selector("pgvigil_backup_previous_size_bytes", BASE): constant(51_000_000, n),
    }


def healthy_group(thresholds: dict[str, Threshold]) -> dict:
    """A healthy database fires nothing: every alert is checked, including at the end of the window."""
    names = sorted({spec.name for spec in alert_specs(thresholds) if thresholds[spec.threshold].levels()})
    checks = [
        {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": []}
        for minute in (30, HEALTHY_MINUTES - 5)
        for name in names
    ]
    return {
        "name": "a healthy, lightly loaded database fires no alert",
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in
                         {**healthy_series(), **monitoring.healthy_series(HEALTHY_MINUTES, thresholds)}.items()],
        "alert_rule_test": checks,
    }
