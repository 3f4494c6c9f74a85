"""A target whose backups are configured but never succeeded: the exporter says so, and an alert fires.

Without `pgvigil_backup_configured` such a target exported no age to alert on: PostgresBackupTooOld
needs a first success. These tests scrape `pgvigil serve` (as the CLI builds it) against a real
PostgreSQL, then feed exactly the scraped series to promtool with the shipped rules.
"""
from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from backup_support import backup_metrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.backup.dump import run_backup
from exporter.backup.pgclient import BackupError
from exporter.backup.state import STATE_NAME
from exporter.bundle.catalog import constant, selector
from exporter.bundle.promtests import duration_minutes
from exporter.bundle.rules import alert_specs, render_description
from exporter.bundle.thresholds import load_thresholds
from exporter.config import load_config
from exporter.server import extra_collectors, start_server

ROOT = Path(__file__).resolve().parents[1]
ALERT = "PostgresBackupNeverSucceeded"


def scrape_backup_series(dsn: str, backup_dir: Path, tmp_path: Path) -> dict[str, tuple[dict, float]]:
    """Serve a config whose backup section points at backup_dir; sample name -> (labels, value)."""
    config_path = tmp_path / "pgvigil.yaml"
    config_path.write_text(f"targets:\n  primary:\n    dsn: {dsn}\ncollectors: []\nbackup:\n  dir: {backup_dir}\n")
    config = load_config(config_path)
    handle = start_server(config, extra_collectors=extra_collectors(config))
    try:
        text = urllib.request.urlopen(handle.url + "/metrics", timeout=10).read().decode()
    finally:
        handle.stop()
    return {s.name: (s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("pgvigil_backup_") or s.name == "pg_up"}


def test_never_run_backup_dir_yields_configured(fresh_db, tmp_path):
    backups = tmp_path / "backups"  # configured, but no job ever created it

    series = scrape_backup_series(fresh_db, backups, tmp_path)

    assert series == {
        "pg_up": ({"target": "primary"}, 1.0),
        "pgvigil_backup_configured": ({"target": "primary"}, 1.0),
        "pgvigil_backup_failures_total": ({"target": "primary"}, 0.0),
        "pgvigil_backup_state_errors_total": ({"target": "primary"}, 0.0),
    }
    assert not backups.exists()  # scraping reads the state, it never creates the directory


def test_only_failed_runs_yield_configured_without_a_success(cluster, tmp_path):
    with pytest.raises(BackupError):
        run_backup(cluster.dsn("no_such_db"), "primary", tmp_path, progress=False)

    assert backup_metrics(tmp_path, "primary") == {
        "pgvigil_backup_configured": 1.0,
        "pgvigil_backup_failures_total": 1.0,
        "pgvigil_backup_last_run_success": 0.0,
        "pgvigil_backup_state_errors_total": 0.0,
    }


def test_damaged_state_file_still_yields_configured(tmp_path, caplog):
    (tmp_path / STATE_NAME).write_text("{not json")

    assert backup_metrics(tmp_path, "primary") == {"pgvigil_backup_configured": 1.0,
                                                   "pgvigil_backup_state_errors_total": 1.0}
    assert "backup metrics unavailable for target primary" in caplog.text


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (scripts/test.sh installs it)")
def test_shipped_rule_fires_on_the_scraped_series(fresh_db, tmp_path):
    """The series a never-run target really exposes make the alert pend until `for:`, then fire."""
    series = scrape_backup_series(fresh_db, tmp_path / "backups", tmp_path)
    thresholds = load_thresholds()
    [spec] = [s for s in alert_specs(thresholds) if s.name == ALERT]
    threshold = thresholds[spec.threshold]
    [(severity, level)] = threshold.levels().items()
    for_minutes = duration_minutes(threshold.for_)
    scrape = {"job": "pgvigil", "instance": "127.0.0.1:9187"}
    minutes = for_minutes + 5
    input_series = [{"series": selector(name, {**labels, **scrape}), "values": constant(value, minutes)}
                    for name, (labels, value) in series.items()]
    input_series.append({"series": selector("up", scrape), "values": constant(1, minutes)})  # Prometheus' own
    labels = {**series["pgvigil_backup_configured"][0], **scrape}
    expected = {
        "exp_labels": {**labels, "severity": severity},
        "exp_annotations": {"summary": spec.summary, "runbook_url": spec.runbook_url,
                            "description": render_description(spec, threshold, level, labels, None)},
    }
    tests = {
        "rule_files": [str(ROOT / "alerts" / "pgvigil-rules.yml"), str(ROOT / "alerts" / "pgvigil-alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": [
            {"eval_time": f"{for_minutes - 1}m", "alertname": ALERT, "exp_alerts": []},
            {"eval_time": f"{for_minutes + 1}m", "alertname": ALERT, "exp_alerts": [expected]},
            # nothing else fires for a healthy server whose backups merely have not started (but the
            # dead man's switch, which always fires)
            *({"eval_time": f"{for_minutes + 1}m", "alertname": other.name, "exp_alerts": []}
              for other in alert_specs(thresholds) if other.name not in (ALERT, "PostgresWatchdog")),
        ]}],
    }
    test_file = tmp_path / "never-succeeded.test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))

    result = subprocess.run(["promtool", "test", "rules", str(test_file)], capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stdout + result.stderr
