"""Backups: too old, never succeeded, failed, failed their restore test, empty or suddenly smaller."""
from __future__ import annotations

from exporter.bundle.catalog.spec import BASE, AlertSpec, Case, Scenario, ValueKind, constant, flag, gauge, selector

GROUP = "pgvigil-backups"
LAST_SUCCESS = "pgvigil_backup_last_success_timestamp_seconds"


def _backup_age(case: Case) -> Scenario:
    # the last success happened `value` seconds before the evaluation time
    stamp = case.eval_at * 60 - case.value
    return Scenario({selector(LAST_SUCCESS, BASE): constant(stamp, case.minutes)}, case.value, dict(BASE))


def _backup_never_succeeded(case: Case) -> Scenario:
    # value 1: backups configured and none succeeded; value 0: the same target with a backup
    # that succeeded an hour before the evaluation
    series = {selector("pgvigil_backup_configured", BASE): constant(1, case.minutes)}
    if case.value < 1:
        stamp = max(case.eval_at * 60 - 3600, 0)
        series[selector(LAST_SUCCESS, BASE)] = constant(stamp, case.minutes)
    return Scenario(series, None, dict(BASE))


def _backup_shrunk(case: Case) -> Scenario:
    previous = 1e9
    last = case.value * previous
    series = {
        selector("pgvigil_backup_last_size_bytes", BASE): constant(last, case.minutes),
        selector("pgvigil_backup_previous_size_bytes", BASE): constant(previous, case.minutes),
    }
    return Scenario(series, last / previous, dict(BASE))


ALERTS = (
    AlertSpec(
        name="PostgresBackupTooOld",
        threshold="backup_age",
        group=GROUP,
        value_expr=f"(time() - {LAST_SUCCESS})",
        summary="The last successful PostgreSQL backup is too old",
        description="The last successful backup of {target} finished {value} ago (alert above {level}).",
        scenario=_backup_age,
        kind=ValueKind.CLOCK,
    ),
    AlertSpec(
        name="PostgresBackupNeverSucceeded",
        threshold="backup_never_succeeded",
        group=GROUP,
        value_expr="pgvigil_backup_configured",
        summary="A PostgreSQL target with backups configured has never had a successful backup",
        description="pgvigil watches the backups of {target}, but none has succeeded yet: there is nothing to restore.",
        scenario=_backup_never_succeeded,
        guard=f"unless {LAST_SUCCESS}",
    ),
    AlertSpec(
        name="PostgresBackupFailed",
        threshold="backup_failed",
        group=GROUP,
        value_expr="pgvigil_backup_last_run_success",
        summary="The last PostgreSQL backup run failed",
        description="The last backup run of {target} failed; the previous good backup keeps ageing.",
        scenario=flag("pgvigil_backup_last_run_success"),
    ),
    AlertSpec(
        name="PostgresBackupVerifyFailed",
        threshold="backup_verify_failed",
        group=GROUP,
        value_expr="pgvigil_backup_last_verify_success",
        summary="The last PostgreSQL backup failed its restore test",
        description="The last backup of {target} did not pass verification: it may not restore.",
        scenario=flag("pgvigil_backup_last_verify_success"),
    ),
    AlertSpec(
        name="PostgresBackupEmpty",
        threshold="backup_empty",
        group=GROUP,
        value_expr="pgvigil_backup_last_size_bytes",
        summary="The last PostgreSQL backup is empty",
        description="The last backup file of {target} is {value} long (alert below {level}).",
        scenario=gauge("pgvigil_backup_last_size_bytes"),
    ),
    AlertSpec(
        name="PostgresBackupShrunk",
        threshold="backup_shrunk",
        group=GROUP,
        value_expr="(pgvigil_backup_last_size_bytes / pgvigil_backup_previous_size_bytes)",
        summary="The last PostgreSQL backup is much smaller than the previous one",
        description="The last backup of {target} is {value} of the previous one's size (alert below {level}).",
        scenario=_backup_shrunk,
    ),
)
