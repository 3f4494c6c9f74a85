"""Service level objectives: the objectives file, the rules and promtool tests generated from it.

The promtool run of the shipped objectives' tests is in tests/test_bundle.py (every file of
alerts/tests); here another objectives file (other numbers, the application latency source, a
28-day period) proves the scenarios follow the objectives, and the committed tests are checked for
what issue 16 asks of each objective: a fast burn pages within the workbook's time, a slow burn
tickets and never pages, a healthy series stays silent, a blip does not page.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from exporter.bundle import ALERT_FILES, render_slo_files, write_bundle
from exporter.bundle.catalog import BASE, RUNBOOK_BASE
from exporter.bundle.slos import DEFAULT_OBJECTIVES, ObjectiveError, load_objectives, parse_objectives
from exporter.bundle.slos_rules import slo_groups
from exporter.bundle.slos_tests import HEALTHY_PREFIX, detection_minutes
from exporter.cli import main

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ROOT / "alerts" / "objectives.yaml"
needs_promtool = pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (scripts/test.sh)")


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def committed_tests() -> list[dict]:
    return yaml.safe_load((ROOT / ALERT_FILES["slo_tests"]).read_text())["tests"]


def test_the_repository_file_is_the_packaged_one():
    # a symlink in the clone, so a non-editable install (package data) ships the same file
    assert OBJECTIVES.is_symlink() and OBJECTIVES.resolve() == DEFAULT_OBJECTIVES.resolve()


def test_shipped_objectives_are_the_runbooks_numbers():
    objectives = load_objectives(OBJECTIVES)
    assert {name: (o.kind, o.objective, o.bound) for name, o in objectives.items()} == {
        "availability": ("availability", 0.999, None),
        "query_latency": ("latency", 0.95, 0.2),
        "cache_hit_ratio": ("cache_hit", 0.95, None),
        "rpo": ("rpo", 0.99, 900.0),
        "rto": ("rto", 0.99, 3600.0),
    }
    assert {o.period for o in objectives.values()} == {30 * 86400.0}
    assert objectives["rpo"].backup_age == 26 * 3600.0


def test_committed_files_are_the_generator_output():
    rendered = render_slo_files(load_objectives(), "alerts/objectives.yaml")
    stale = [str(path) for path, text in rendered.items() if (ROOT / path).read_text() != text]
    assert not stale, f"regenerate with `pgvigil bundle`: {', '.join(stale)} differ from the generator"


def test_standard_windows_and_burn_levels():
    groups = {g["name"]: g["rules"] for g in slo_groups(load_objectives())["groups"]}
    availability = groups["pgvigil-slo-availability"]
    records = [r["record"] for r in availability if "record" in r]
    windows = [name.rsplit("ratio_rate", 1)[1] for name in records if name.startswith("pgvigil:slo_errors:ratio_rate")]
    assert windows == ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    page, ticket = [r for r in availability if "alert" in r]
    assert page["labels"] == {"severity": "critical"} and ticket["labels"] == {"severity": "warning"}
    assert 'ratio_rate1h{slo="availability"} > 0.0144' in page["expr"]
    assert 'ratio_rate5m{slo="availability"} > 0.0144' in page["expr"]
    assert 'ratio_rate6h{slo="availability"} > 0.006' in page["expr"]
    assert 'ratio_rate1d{slo="availability"} > 0.003' in ticket["expr"]
    assert 'ratio_rate3d{slo="availability"} > 0.001' in ticket["expr"]
    budget = next(r for r in availability if r.get("record") == "pgvigil:slo_budget_remaining:ratio")
    assert budget["expr"] == '1 - pgvigil:slo_errors:ratio_period{slo="availability"} / 0.001'


def test_a_shorter_period_scales_the_windows():
    objective = parse_objectives("a:\n  kind: availability\n  objective: 0.999\n  period: 6h\n  description: d\n")["a"]
    assert list(objective.windows().values()) == ["2500ms", "15s", "30s", "1m", "3m", "12m", "36m"]


def test_alerts_follow_the_conventions_and_have_runbook_sections():
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#{2,3} (.+)$", runbooks, re.M)}
    groups = yaml.safe_load((ROOT / ALERT_FILES["slos"]).read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) == 2 * len(load_objectives())
    for rule in alerts:
        assert re.fullmatch(r"Postgres[A-Z][A-Za-z]+BudgetBurn", rule["alert"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        annotations = rule["annotations"]
        assert "{{" not in annotations["summary"]
        assert "{{ $labels.target }}" in annotations["description"]
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE + "#") and url.split("#")[1] in anchors, f"no runbook section {url}"


@pytest.mark.parametrize("objective", sorted(load_objectives()))
def test_every_objective_has_the_four_scenarios(objective):
    spec = load_objectives()[objective]
    tests = [t for t in committed_tests() if t["name"].startswith(spec.alert_name + " ")]
    by_kind = {t["name"].split(" ", 1)[1].split(":")[0]: t for t in tests}
    assert sorted(by_kind) == ["blip", "fast burn", "healthy", "slow burn"]

    def severities(test: dict) -> list[set[str]]:
        return [{a["exp_labels"]["severity"] for a in check["exp_alerts"]} for check in test["alert_rule_test"]]

    assert all(s == set() for s in severities(by_kind["healthy"]))
    fresh, *later = severities(by_kind["slow burn"])
    assert fresh == set(), "a ticket from a window holding less than 90 minutes of data"
    assert later and all(s == {"warning"} for s in later)
    assert all("critical" not in s for s in severities(by_kind["blip"]))
    before, detected = severities(by_kind["fast burn"])
    assert "critical" not in before and "critical" in detected
    minutes = int(re.search(r"pages within (\d+)m", by_kind["fast burn"]["name"]).group(1))
    assert minutes <= detection_minutes(spec) + 1, "the page comes later than the workbook's detection time"


def _series_names() -> dict[str, tuple[str, ...]]:
    from exporter.config import available_packs, parse_config

    packs = ", ".join(sorted(available_packs()))
    config = parse_config(f"targets:\n  p: {{dsn: postgresql://x@127.0.0.1:1/app}}\ncollectors: [{packs}]\n")
    return {metric.name: tuple(query.labels) for query in config.queries for metric in query.metrics}


def test_tests_use_the_series_pgvigil_really_exposes():
    packs = _series_names()
    python_sources = "".join(p.read_text() for p in [ROOT / "exporter" / "scrape" / "selfmetrics.py",
                                                     *sorted((ROOT / "exporter" / "backup").glob("*.py"))])
    for series in {s["series"] for t in committed_tests() for s in t["input_series"]}:
        name, labels = re.fullmatch(r"(\w+)\{(.*)\}", series).groups()
        keys = set(re.findall(r'(\w+)="', labels)) - set(BASE)
        if name in packs:
            assert keys == set(packs[name]), f"{series}: the pack's labels are {packs[name]}"
        else:
            assert f'"{name}"' in python_sources, f"{name}: no pack or collector exposes it"


OTHER = """\
availability:
  kind: availability
  objective: 0.995
  period: 28d
  description: other numbers
app_latency:
  kind: latency
  objective: 0.99
  bound: 200ms
  source: application
  metric: app_db_operation_duration_seconds
  metric_labels: [operation, success]
  period: 28d
  description: the application's own histogram
cache:
  kind: cache_hit
  objective: 0.97
  period: 28d
  description: d
recovery_point:
  kind: rpo
  objective: 0.995
  bound: 5m
  backup_age: 8h
  period: 28d
  description: d
"""


@needs_promtool
def test_other_objectives_generate_tests_that_pass(tmp_path):
    mine = tmp_path / "objectives.yaml"
    mine.write_text(OTHER)
    result = CliRunner().invoke(main, ["bundle", "--objectives", str(mine), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rules = (tmp_path / "out" / ALERT_FILES["slos"]).read_text()
    assert 'app_db_operation_duration_seconds_bucket{le="0.2"}' in rules
    assert "PostgresRecoveryPointBudgetBurn" in rules and "[28d]" in rules
    checked = run("promtool", "check", "rules", str(tmp_path / "out" / ALERT_FILES["slos"]))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run("promtool", "test", "rules", ALERT_FILES["slo_tests"].name, cwd=tmp_path / "out" / "alerts" / "tests")
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-4000:]


@pytest.mark.parametrize("text, message", [
    ("a:\n  kind: availabilty\n  objective: 0.999\n  description: d\n",
     "o.yaml:2: a.kind: expected one of availability, latency, cache_hit, rpo, rto, got the string "
     "'availabilty'; did you mean 'availability'?"),
    ("a:\n  kind: availability\n  objective: 99.9\n  description: d\n",
     "o.yaml:3: a.objective: must be between 0 and 1 (a share such as 0.999), got 99.9"),
    ("a:\n  kind: cache_hit\n  objective: 0.9\n  description: d\n",
     "o.yaml:3: a.objective: must be above 0.9306: with a budget of 10 % even a total failure cannot burn it "
     "14.4 times too fast, so the fast burn could never page"),
    ("a:\n  kind: availability\n  objective: 0.999\n  period: a month\n  description: d\n",
     "o.yaml:4: a.period: expected a duration such as 500ms, 5s, 2m or 1h, got the string 'a month'"),
    ("a:\n  kind: availability\n  objective: 0.999\n  period: 1h\n  description: d\n",
     "o.yaml:4: a.period: must be at least 2h24m"),
    ("a:\n  kind: rto\n  objective: 0.99\n  description: d\n", "o.yaml:1: a: missing required key 'bound'"),
    ("a:\n  kind: cache_hit\n  objective: 0.95\n  bound: 1s\n  description: d\n",
     "o.yaml:4: a.bound: unknown key 'bound'; expected one of: kind, objective, period, description"),
    ("a:\n  kind: latency\n  objective: 0.95\n  bound: 200ms\n  sorce: statements\n  description: d\n",
     "o.yaml:5: a.sorce: unknown key 'sorce'; did you mean 'source'?"),
    ("a:\n  kind: latency\n  objective: 0.95\n  bound: 200ms\n  source: application\n  description: d\n",
     "o.yaml:1: a: source application needs metric: the name of a histogram, without _bucket"),
    ("Avail:\n  kind: availability\n  objective: 0.999\n  description: d\n",
     "o.yaml:1: Avail: objective names are lower_snake_case"),
    ("a: [1, 2\n", "o.yaml:2: invalid YAML"),
])
def test_invalid_objectives_name_file_line_and_key(text, message):
    with pytest.raises(ObjectiveError) as caught:
        parse_objectives(text, "o.yaml")
    assert any(error.startswith(message) for error in caught.value.errors), caught.value.errors


def test_bundle_reports_every_objective_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a:\n  kind: rto\n  objective: 2\n  description: d\nb:\n  kind: nope\n  objective: 0.9\n"
                   "  description: d\n")
    result = CliRunner().invoke(main, ["bundle", "--objectives", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"error: {bad}:1: a: missing required key 'bound'" in result.output
    assert f"error: {bad}:3: a.objective: must be between 0 and 1" in result.output
    assert f"error: {bad}:6: b.kind: expected one of" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def latency_objective(*labels: str) -> str:
    """An application latency objective whose metric_labels are `labels`, one per line from line 8."""
    return ("app_latency:\n  kind: latency\n  objective: 0.99\n  bound: 250ms\n  source: application\n"
            "  metric: app_request_duration_seconds\n  metric_labels:\n"
            + "".join(f"    - {label}\n" for label in labels) + "  description: d\n")


def test_bundle_refuses_objectives_that_would_paste_into_promql(tmp_path):
    """metric_labels go into `sum without(...)`: a crafted one would turn the objective into a constant."""
    crafted = tmp_path / "crafted.yaml"
    crafted.write_text(latency_objective("route) (vector(0)) or sum without(x", "__name__", "le", "9lives",
                                         "'route\"} or vector(1) #'", "route", "route")
                       + "zero_bound:\n  kind: rto\n  objective: 0.99\n  bound: 0s\n  description: d\n")
    result = CliRunner().invoke(main, ["bundle", "--objectives", str(crafted), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    name = "expected a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __), got the string"
    assert result.output.splitlines() == [
        f"error: {crafted}:8: app_latency.metric_labels[0]: {name} 'route) (vector(0)) or sum without(x'",
        f"error: {crafted}:9: app_latency.metric_labels[1]: {name} '__name__'",
        f"error: {crafted}:10: app_latency.metric_labels[2]: 'le' is the histogram's bucket label: the bucket at the "
        "bound is read by it, never summed away",
        f"error: {crafted}:11: app_latency.metric_labels[3]: {name} '9lives'",
        f"error: {crafted}:12: app_latency.metric_labels[4]: {name} 'route\"}} or vector(1) #'",
        f"error: {crafted}:14: app_latency.metric_labels[6]: label 'route' is listed twice",
        f"error: {crafted}:19: zero_bound.bound: must be above zero: with a bound of 0 every event is bad and the "
        "objective is a constant",
    ]
    assert not (tmp_path / "out").exists()


def test_metric_labels_that_are_label_names_are_summed_away():
    groups = slo_groups(parse_objectives(latency_objective("route", "_status"), "o.yaml"))["groups"]
    exprs = "\n".join(rule["expr"] for group in groups for rule in group["rules"])
    assert "sum without(route, _status) (rate(app_request_duration_seconds_count[5m]))" in exprs
    assert 'sum without(le, route, _status) (rate(app_request_duration_seconds_bucket{le="0.25"}[5m]))' in exprs


def test_bundle_writes_the_slo_files(tmp_path):
    written = write_bundle(None, tmp_path)
    assert tmp_path / ALERT_FILES["slos"] in written and tmp_path / ALERT_FILES["slo_tests"] in written
    assert tmp_path / "dashboards" / "slos.json" in written


@needs_promtool
@pytest.mark.parametrize("objective, threshold_alert", [
    ("cache_hit_ratio", "PostgresCacheHitRatioLow"),
    ("rpo", "PostgresWalArchiveStale"),
])
def test_the_blip_pages_the_threshold_alert_but_not_the_objective(tmp_path, objective, threshold_alert):
    """The blip scenario, run against the shipped threshold rules too: the threshold alert on the same
    signal reaches critical, while the objective's checks (no page) hold."""
    spec = load_objectives()[objective]
    blip = next(t for t in committed_tests() if t["name"].startswith(f"{spec.alert_name} blip"))
    # the last minute of the blip (it starts after HEALTHY_PREFIX minutes)
    minutes = int(re.search(r"blip: (\d+)m", blip["name"]).group(1))
    end = f"{HEALTHY_PREFIX + minutes - 1}m"
    firing = f'count(ALERTS{{alertname="{threshold_alert}", alertstate="firing", severity="critical"}})'
    document = {
        "rule_files": [str(ROOT / ALERT_FILES[key]) for key in ("rules", "alerts", "slos")],
        "evaluation_interval": "1m",
        "tests": [{**blip, "promql_expr_test": [{"expr": firing, "eval_time": end,
                                                 "exp_samples": [{"labels": "{}", "value": 1}]}]}],
    }
    (tmp_path / "blip.test.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = run("promtool", "test", "rules", "blip.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
