"""Generators of the alerting bundle from the thresholds file.

`write_bundle()` writes, under an output directory (the repository root by default):
  alerts/pgvigil-rules.yml              recording rules (ratios the alerts and dashboards share)
  alerts/pgvigil-alerts.yml             alerting rules, one per alert and severity
  alerts/alertmanager.yml               routing by severity, grouping, inhibition (secrets from files)
  alerts/tests/pgvigil-alerts.test.yml  promtool unit tests placed around every threshold
and the Grafana dashboards (`exporter.bundle.dashboards`). With `with_examples`,
also the optional group of the application-level examples (see `exporter.bundle.examples`):
  alerts/pgvigil-examples-rules.yml              copied from examples/alerts/app-rules.yml
  alerts/tests/pgvigil-examples-rules.test.yml   its promtool tests
docs/metrics.md is generated here too, by `exporter.bundle.metrics_doc` (`pgvigil metrics-doc`).
"""
from __future__ import annotations

from pathlib import Path

from exporter.bundle import alertmanager, dashboards, examples, promtests, rules
from exporter.bundle.thresholds import DEFAULT_THRESHOLDS, load_thresholds

ALERT_FILES = {
    "rules": Path("alerts/pgvigil-rules.yml"),
    "alerts": Path("alerts/pgvigil-alerts.yml"),
    "alertmanager": Path("alerts/alertmanager.yml"),
    "tests": Path("alerts/tests/pgvigil-alerts.test.yml"),
}


def render_alert_files(thresholds: dict, source: str) -> dict[Path, str]:
    """Relative path -> text of every alerting file of the bundle."""
    return {
        ALERT_FILES["rules"]: rules.render_yaml(rules.recording_groups(), source),
        ALERT_FILES["alerts"]: rules.render_yaml(rules.alert_groups(thresholds), source),
        ALERT_FILES["alertmanager"]: alertmanager.render(alertmanager.production_config(thresholds)),
        ALERT_FILES["tests"]: rules.render_yaml(promtests.unit_test_file(thresholds), source),
    }


def write_bundle(thresholds_path: str | Path | None, out_dir: str | Path, with_examples: bool = False) -> list[Path]:
    """Generate the bundle for a thresholds file into `out_dir`; returns the files written.
    `with_examples` adds the application examples' alert group (off by default)."""
    path = Path(thresholds_path) if thresholds_path is not None else DEFAULT_THRESHOLDS
    thresholds = load_thresholds(path)
    out_dir = Path(out_dir)
    files = render_alert_files(thresholds, source_name(path))
    if with_examples:
        # read before writing anything, so a missing examples directory leaves no half bundle
        files.update(examples.render_example_files())
    written = []
    for relative, text in files.items():
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    written.extend(dashboards.write_dashboards(thresholds, out_dir))
    return written


def source_name(path: Path) -> str:
    """How generated files name their thresholds file: the shipped defaults read as the repo file."""
    if Path(path).read_bytes() == DEFAULT_THRESHOLDS.read_bytes():
        return "alerts/thresholds.yaml"
    return Path(path).name

