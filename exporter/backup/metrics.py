"""The backup state as Prometheus metrics, read from the state file at every scrape.

Names are a contract with the shipped alert rules:

=================================================  ==========================================
pgvigil_backup_configured                          always 1: this target's backups are watched
pgvigil_backup_last_success_timestamp_seconds      end of the last fully successful run
pgvigil_backup_last_size_bytes                     size of that backup
pgvigil_backup_previous_size_bytes                 size of the successful backup before it
pgvigil_backup_last_duration_seconds               how long that run took
pgvigil_backup_last_run_success                    1 if the most recent finished run succeeded
pgvigil_backup_last_verify_success                 1 if the most recent verification passed
pgvigil_backup_last_verify_timestamp_seconds       when that verification ran
pgvigil_backup_last_restore_duration_seconds       how long the last successful `verify --restore` took
                                                   to restore and check the backup (the RTO objective)
pgvigil_backup_verified_backup_timestamp_seconds   end of the newest backup that passed verification
                                                   (the RPO objective's backup age)
pgvigil_backup_failures_total                      failed or interrupted runs (counter)
pgvigil_backup_state_errors_total                  scrapes where the state file was unreadable or damaged
=================================================  ==========================================

For a `databases:` target (cluster.py), once a run has listed its databases, every series is there
once per database, labelled `datname` as discovery labels the exporter's own, and once without
`datname` for the cluster's globals (roles, tablespaces); the databases are those of the latest run.

A value that does not exist yet (no successful run) is absent rather than 0, so that
``time() - pgvigil_backup_last_success_timestamp_seconds`` never claims a 50-year-old backup;
``pgvigil_backup_configured`` is there from the first scrape, whatever the state file says (even
when it is unreadable, which is logged), so that a target whose backups have never succeeded can
alert: configured, and no last success.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.backup.pgclient import BackupError
from exporter.backup.state import STATE_NAME, State, StateFile, backups_of, database_targets, reap_interrupted

log = logging.getLogger(__name__)

GAUGES = (
    ("pgvigil_backup_last_success_timestamp_seconds",
     "Unix time the last successful backup run finished.", ("last_success", "finished")),
    ("pgvigil_backup_last_size_bytes", "Size of the last successful backup.", ("last_success", "size_bytes")),
    ("pgvigil_backup_previous_size_bytes", "Size of the successful backup before the last one.",
     ("previous_size_bytes",)),
    ("pgvigil_backup_last_duration_seconds", "Duration of the last successful backup run.",
     ("last_success", "duration_seconds")),
    ("pgvigil_backup_last_run_success", "1 if the most recent backup run succeeded, 0 if it failed.",
     ("last_run", "success")),
    ("pgvigil_backup_last_verify_success", "1 if the most recent backup verification passed, 0 if it failed.",
     ("last_verify", "success")),
    ("pgvigil_backup_last_verify_timestamp_seconds", "Unix time of the most recent backup verification.",
     ("last_verify", "at")),
    ("pgvigil_backup_last_restore_duration_seconds",
     "Seconds the last successful restore test (verify --restore) took to restore and check the backup.",
     ("last_restore", "duration_seconds")),
)


def _lookup(record: dict, path: tuple[str, ...]) -> float | None:
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if value is None or isinstance(value, (dict, list, str)):
        return None
    return float(value)


class BackupStateCollector:
    """A custom collector for one target's backups in one directory."""

    def __init__(self, dir: Path, target: str) -> None:
        self.dir = Path(dir)
        self.target = target
        self._complained = False
        self.errors = 0  # scrapes that found the state file unreadable or damaged

    def describe(self) -> list[Metric]:
        # Nothing: registering must not read the state file.
        return []

    def collect(self) -> Iterator[Metric]:
        # Built whole before anything is yielded: a damaged state file fails this collector alone,
        # never the scrape (an exception out of collect() turns all of /metrics into a 500).
        series = [(self.target, [self.target])]
        try:
            state = StateFile(self.dir).read()
            series = self.series(state)
            families = list(self.state_families(state, series))
            self._complained = False
        except BackupError as exc:
            families = self.failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - a shape the state check missed: this collector fails alone
            families = self.failed(f"the backup state {self.dir / STATE_NAME} is damaged ({type(exc).__name__})")
        labels = ["target", "datname"] if len(series[0][1]) > 1 else ["target"]
        configured = GaugeMetricFamily("pgvigil_backup_configured",
                                       "1: the exporter watches this target's backups "
                                       "(its config has a backup section).",
                                       labels=labels)
        for _, values in series:
            configured.add_metric(values, 1.0)
        yield configured
        errors = CounterMetricFamily("pgvigil_backup_state_errors",
                                     "Scrapes where the backup state file could not be read or was damaged.",
                                     labels=["target"])
        errors.add_metric([self.target], float(self.errors))
        yield from families
        yield errors

    def series(self, state: State) -> list[tuple[str, list[str]]]:
        """(state target, label values) of each series set: the target; for a `databases:` target whose run
        listed its databases, its globals (datname "", an absent label) and each database."""
        databases = database_targets(state, self.target)
        if not databases:
            return [(self.target, [self.target])]
        return [(self.target, [self.target, ""])] + [(name, [self.target, name.split("/", 1)[1]])
                                                     for name in databases]

    def failed(self, message: str) -> list[Metric]:
        """Count the failure, log it once until the file is readable again: a scrape every 15 s must not flood."""
        self.errors += 1
        if not self._complained:
            log.warning("backup metrics unavailable for target %s: %s", self.target, message)
            self._complained = True
        return []

    def state_families(self, state: State, series: list[tuple[str, list[str]]]) -> Iterator[Metric]:
        # A run killed since the last write counts as failed now, as the next writer will record it.
        reap_interrupted(state)
        labels = ["target", "datname"] if len(series[0][1]) > 1 else ["target"]
        for name, help_text, path in GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for target, values in series:
                value = _lookup(state["targets"].get(target) or {}, path)
                if value is not None:
                    family.add_metric(values, value)
            if family.samples:
                yield family
        family = GaugeMetricFamily("pgvigil_backup_verified_backup_timestamp_seconds",
                                   "Unix time the newest backup that passed verification finished.", labels=labels)
        for target, values in series:
            verified = verified_backup_finished(state, target)
            if verified is not None:
                family.add_metric(values, verified)
        if family.samples:
            yield family
        # With no record yet the failure counter still starts at 0, so that increase() sees the first one.
        failures = CounterMetricFamily("pgvigil_backup_failures", "Backup runs that failed or were interrupted.",
                                       labels=labels)
        for target, values in series:
            failures.add_metric(values, float((state["targets"].get(target) or {}).get("failures_total", 0)))
        yield failures


def verified_backup_finished(state: State, target: str) -> float | None:
    """When the newest complete backup whose last verification passed finished: the newest point
    a restore is known to reach (without WAL replay)."""
    for entry in backups_of(state, target=target, status="complete"):
        if (entry.get("verify") or {}).get("success") and entry.get("finished") is not None:
            return float(entry["finished"])
    return None
