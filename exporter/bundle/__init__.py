"""Generators of the alerting bundle from the thresholds file.

`write_bundle()` writes, under an output directory (the repository root by default):
  alerts/pgvigil-rules.yml              recording rules (ratios the alerts and dashboards share)
  alerts/pgvigil-alerts.yml             alerting rules, one per alert and severity
  alerts/alertmanager.yml               routing by severity, grouping, inhibition (secrets from files)
  alerts/tests/pgvigil-alerts.test.yml  promtool unit tests placed around every threshold
  alerts/pgvigil-slos.yml               the objectives' error ratios, budgets and burn-rate alerts
  alerts/tests/pgvigil-slos.test.yml    their promtool tests (fast burn, slow burn, healthy, blip)
(the last two from the objectives file, `exporter.bundle.slos`) and the Grafana dashboards
(`exporter.bundle.dashboards`). With `with_examples`,
also the optional group of the application-level examples (see `exporter.bundle.examples`):
  alerts/pgvigil-examples-rules.yml              copied from examples/alerts/app-rules.yml
  alerts/tests/pgvigil-examples-rules.test.yml   its promtool tests
docs/metrics.md is generated here too, by `exporter.bundle.metrics_doc` (`pgvigil metrics-doc`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from exporter.bundle import (
    alertmanager,
    dashboards,
    examples,
    output,
    promtests,
    rules,
    runbooks,
    slos_rules,
    slos_tests,
)
from exporter.bundle.catalog import RUNBOOK_BASE, catalog
from exporter.bundle.profiles import apply_profile, load_profile
from exporter.bundle.slos import DEFAULT_OBJECTIVES, Objective, load_objectives
from exporter.bundle.thresholds import DEFAULT_THRESHOLDS, Threshold, load_thresholds
from exporter.files import CONFIG_LIMIT, UnreadableFile, read_limited

ALERT_FILES = {
    "rules": Path("alerts/pgvigil-rules.yml"),
    "alerts": Path("alerts/pgvigil-alerts.yml"),
    "alertmanager": Path("alerts/alertmanager.yml"),
    "tests": Path("alerts/tests/pgvigil-alerts.test.yml"),
    "slos": Path("alerts/pgvigil-slos.yml"),
    "slo_tests": Path("alerts/tests/pgvigil-slos.test.yml"),
}


def render_alert_files(thresholds: dict, source: str, objectives: dict[str, Objective] | None = None,
                       objectives_source: str = "alerts/objectives.yaml") -> dict[Path, str]:
    """Relative path -> text of every alerting file of the bundle (the shipped objectives by default)."""
    if objectives is None:
        objectives = load_objectives()
    return {
        ALERT_FILES["rules"]: rules.render_yaml(rules.recording_groups(), source),
        ALERT_FILES["alerts"]: rules.render_yaml(rules.alert_groups(thresholds), source),
        ALERT_FILES["alertmanager"]: alertmanager.render(alertmanager.production_config(thresholds)),
        ALERT_FILES["tests"]: rules.render_yaml(promtests.unit_test_file(thresholds), source),
        **render_slo_files(objectives, objectives_source),
    }


def render_slo_files(objectives: dict[str, Objective], source: str) -> dict[Path, str]:
    """The objectives' rule file and its promtool tests."""
    header = slos_rules.HEADER.format(source=source)
    return {
        ALERT_FILES["slos"]: header + rules.dump_yaml(slos_rules.slo_groups(objectives)),
        ALERT_FILES["slo_tests"]: header + rules.dump_yaml(slos_tests.unit_test_file(objectives)),
    }


def write_bundle(thresholds_path: str | Path | None, out_dir: str | Path, with_examples: bool = False,
                 objectives_path: str | Path | None = None, *, profile: str | None = None,
                 runbook_base: str = RUNBOOK_BASE) -> list[Path]:
    """Generate the bundle for a thresholds file (and an objectives file) into `out_dir`; returns the
    files written. `with_examples` adds the application examples' alert group (off by default);
    `profile` applies a declared override to the thresholds (`exporter.bundle.profiles`, e.g. the
    demo's short waits); `runbook_base` is where the alerts' runbook links point."""
    inputs = load_inputs(thresholds_path, objectives_path, profile)
    runbooks.check_base(runbook_base)
    out_dir = Path(out_dir)
    files = render_alert_files(inputs.thresholds, inputs.source, inputs.objectives, inputs.objectives_source)
    if with_examples:
        # read before writing anything, so a missing examples directory leaves no half bundle
        files.update(examples.render_example_files())
    texts = {str(relative): runbooks.rebase(text, runbook_base) for relative, text in files.items()}
    texts.update({f"dashboards/{name}": json.dumps(model, indent=2, ensure_ascii=False) + "\n"
                  for name, model in dashboards.build_dashboards(inputs.thresholds).items()})
    return output.write_all(out_dir, texts)  # all or nothing: a full disk leaves no half bundle


@dataclass(frozen=True)
class BundleInputs:
    """The thresholds (with a profile applied) and objectives a bundle is generated from, and how
    the generated files name them."""
    thresholds: dict[str, Threshold]
    objectives: dict[str, Objective]
    source: str
    objectives_source: str


def load_inputs(thresholds_path: str | Path | None, objectives_path: str | Path | None,
                profile: str | None = None) -> BundleInputs:
    """Read the thresholds and objectives files (the shipped ones by default)."""
    path = Path(thresholds_path) if thresholds_path is not None else DEFAULT_THRESHOLDS
    thresholds = load_thresholds(path, required={spec.threshold for spec in catalog()})
    if profile is not None:
        thresholds = apply_profile(thresholds, load_profile(profile))
    objectives_file = Path(objectives_path) if objectives_path is not None else DEFAULT_OBJECTIVES
    return BundleInputs(
        thresholds=thresholds,
        objectives=load_objectives(objectives_file),
        source=source_name(path) + (f", profile {profile}" if profile is not None else ""),
        objectives_source=source_name(objectives_file, DEFAULT_OBJECTIVES, "alerts/objectives.yaml"),
    )


def source_name(path: Path, default: Path = DEFAULT_THRESHOLDS, shown: str = "alerts/thresholds.yaml") -> str:
    """How generated files name their source file: the shipped defaults read as the repo file."""
    try:
        if read_limited(path, CONFIG_LIMIT, "file") == read_limited(default, CONFIG_LIMIT, "file"):
            return shown
    except UnreadableFile:  # read a moment ago: replaced since, so not the default one
        pass
    return Path(path).name

