"""The alerting bundle: committed files equal the generator's output, and real promtool/amtool accept them.

promtool runs the generated unit tests, which for every alert and severity put the value just past
and just short of the level, plus a healthy database that must fire nothing. Changing a number in
a thresholds file moves those tests with it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from exporter.bundle import ALERT_FILES, alertmanager, render_alert_files, source_name, write_bundle
from exporter.bundle.catalog import RUNBOOK_BASE, monitoring
from exporter.bundle.examples import EXAMPLE_FILES, EXAMPLE_RULES, render_example_files
from exporter.bundle.humanize import humanize, humanize1024, humanize_duration, humanize_percentage
from exporter.bundle.rules import BundleError, alert_specs
from exporter.bundle.thresholds import DEFAULT_THRESHOLDS, ThresholdError, load_thresholds, parse_thresholds
from exporter.cli import main

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = ROOT / "alerts" / "thresholds.yaml"
TEST_FILE = ROOT / ALERT_FILES["tests"]

INSTALLED_BY = "not installed (scripts/test.sh installs it)"
needs_promtool = pytest.mark.skipif(not shutil.which("promtool"), reason=f"promtool {INSTALLED_BY}")
needs_amtool = pytest.mark.skipif(not shutil.which("amtool"), reason=f"amtool {INSTALLED_BY}")


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_packaged_thresholds_are_the_repository_file():
    assert DEFAULT_THRESHOLDS.read_bytes() == THRESHOLDS.read_bytes(), (
        "exporter/bundle/default_thresholds.yaml must equal alerts/thresholds.yaml: "
        "cp alerts/thresholds.yaml exporter/bundle/default_thresholds.yaml"
    )


def test_committed_files_are_the_generator_output():
    rendered = render_alert_files(load_thresholds(), source_name(DEFAULT_THRESHOLDS))
    stale = [str(path) for path, text in rendered.items() if (ROOT / path).read_text() != text]
    assert not stale, f"regenerate with `pgvigil bundle`: {', '.join(stale)} differ from the generator"


@needs_promtool
def test_promtool_accepts_the_rules():
    result = run("promtool", "check", "rules", str(ROOT / ALERT_FILES["rules"]), str(ROOT / ALERT_FILES["alerts"]))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass():
    for test_file in sorted((ROOT / "alerts" / "tests").glob("*.yml")):
        result = run("promtool", "test", "rules", test_file.name, cwd=test_file.parent)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
@pytest.mark.parametrize("variant", ["shipped", "webhook"])
def test_amtool_accepts_the_alertmanager_config(variant, tmp_path):
    if variant == "shipped":
        path = ROOT / ALERT_FILES["alertmanager"]
    else:
        path = tmp_path / "alertmanager.yml"
        path.write_text(alertmanager.render(alertmanager.webhook_config("http://127.0.0.1:9/")))
    result = run("amtool", "check-config", str(_for_installed_amtool(path, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def _amtool_version() -> tuple[int, ...]:
    found = re.search(r"version (\d+)\.(\d+)", run("amtool", "--version").stdout + run("amtool", "--version").stderr)
    return tuple(int(part) for part in found.groups()) if found else (0, 0)


def _for_installed_amtool(path: Path, tmp_path: Path) -> Path:
    """The config as the installed amtool can read it: Alertmanager before 0.26 (Debian 12 ships 0.25)
    has no webhook `url_file`, which only the heartbeat receiver uses; there it becomes a `url`, and
    nothing else changes."""
    text = path.read_text()
    if _amtool_version() >= (0, 26) or not re.search(r"\burl_file:", text):
        return path
    old = f"url_file: {alertmanager.SECRETS_DIR}/heartbeat_url"
    assert len(re.findall(r"\burl_file:", text)) == text.count(old) == 1
    copy = tmp_path / "alertmanager-0.25.yml"
    copy.write_text(text.replace(old, "url: https://heartbeat.example.com/ping"))
    return copy


@needs_amtool
def test_the_watchdog_goes_to_the_heartbeat_receiver_alone(tmp_path):
    config = _for_installed_amtool(ROOT / ALERT_FILES["alertmanager"], tmp_path)
    result = run("amtool", "config", "routes", "test", f"--config.file={config}",
                 "alertname=PostgresWatchdog", "severity=none")
    assert result.returncode == 0 and result.stdout.strip() == "heartbeat", result.stdout + result.stderr
    for severity in ("critical", "warning"):  # even a watchdog relabelled with a severity
        result = run("amtool", "config", "routes", "test", f"--config.file={config}",
                     "alertname=PostgresWatchdog", f"severity={severity}")
        assert result.stdout.strip() == "heartbeat", result.stdout + result.stderr


@needs_amtool
@pytest.mark.parametrize("severity, receiver", [("critical", "database-critical"), ("warning", "database-warning")])
def test_alertmanager_routes_by_severity(severity, receiver, tmp_path):
    config = _for_installed_amtool(ROOT / ALERT_FILES["alertmanager"], tmp_path)
    result = run("amtool", "config", "routes", "test", f"--config.file={config}",
                 "alertname=PostgresDown", "target=primary", f"severity={severity}")
    assert result.stdout.strip() == receiver, result.stdout + result.stderr


def test_alertmanager_channels_and_secrets():
    config = yaml.safe_load((ROOT / ALERT_FILES["alertmanager"]).read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    channels = {name: sorted(k for k in r if k.endswith("_configs")) for name, r in receivers.items()}
    assert channels == {
        "database-critical": ["email_configs", "pagerduty_configs", "slack_configs"],
        "database-warning": ["email_configs", "slack_configs"],
        "heartbeat": ["webhook_configs"],
    }
    # the heartbeat URL holds the service's token: read from a file, never written here
    assert receivers["heartbeat"]["webhook_configs"] == [
        {"url_file": "/etc/alertmanager/secrets/heartbeat_url", "send_resolved": False}]
    assert config["route"]["group_by"] == ["alertname", "target"]
    text = (ROOT / ALERT_FILES["alertmanager"]).read_text()
    # secrets only by reference: no inline webhook URL, password, or routing/service key
    for key in ("api_url:", "auth_password:", "routing_key:", "service_key:", "hooks.slack.com"):
        assert key not in text
    assert "slack_api_url_file" in text and "smtp_auth_password_file" in text and "routing_key_file" in text
    inhibit = config["inhibit_rules"]
    assert {"alertname", "target"} <= set(inhibit[0]["equal"])
    assert inhibit[1]["source_matchers"] == ['alertname="PostgresDown"'] and inhibit[1]["equal"] == ["target"]


def test_every_alert_follows_the_conventions():
    groups = yaml.safe_load((ROOT / ALERT_FILES["alerts"]).read_text())["groups"]
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#{2,3} (.+)$", runbooks, re.M)}
    watchdog = [r for g in groups for r in g["rules"] if r["alert"] == "PostgresWatchdog"]
    # the dead man's switch: no labels to template, a severity nobody is paged by (its route decides)
    assert len(watchdog) == 1 and watchdog[0]["expr"] == "vector(1)" and watchdog[0]["labels"] == {"severity": "none"}
    for rule in (r for g in groups for r in g["rules"] if r["alert"] != "PostgresWatchdog"):
        name = rule["alert"]
        assert re.fullmatch(r"Postgres[A-Z][A-Za-z]+", name)
        assert rule["labels"]["severity"] in ("warning", "critical")
        annotations = rule["annotations"]
        assert "{{" not in annotations["summary"], f"{name}: summary must be static"
        assert "{{ $labels." in annotations["description"], f"{name}: description must be templated"
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE + "#") and url.split("#")[1] in anchors, f"{name}: no runbook section {url}"


def test_every_alert_and_severity_is_tested_both_sides():
    tests = yaml.safe_load(TEST_FILE.read_text())["tests"]
    thresholds = load_thresholds()
    for spec in alert_specs(thresholds):
        for severity in thresholds[spec.threshold].levels():
            fires = [t for t in tests if t["name"].startswith(f"{spec.name} {severity} fires just past")]
            silent = [t for t in tests if t["name"].startswith(f"{spec.name} {severity} silent just short of")]
            assert len(fires) == 1 and len(silent) == 1, (spec.name, severity)
            assert severity in _severities_expected(fires[0], spec.name)
            assert severity not in _severities_expected(silent[0], spec.name)
    healthy = [t for t in tests if t["name"].startswith("a healthy")]
    checked = {c["alertname"] for c in healthy[0]["alert_rule_test"] if c["exp_alerts"] == []}
    assert checked == {spec.name for spec in alert_specs(thresholds) if thresholds[spec.threshold].levels()}


def test_an_opt_in_alert_is_off_as_shipped_and_on_with_a_level(tmp_path):
    """PostgresTablesWithoutRls fired for every ordinary table: it ships off (both levels null)."""
    shipped = yaml.safe_load((ROOT / "alerts" / "pgvigil-alerts.yml").read_text())
    names = {rule.get("alert") for group in shipped["groups"] for rule in group["rules"]}
    assert "PostgresTablesWithoutRls" not in names
    text = _set_level(THRESHOLDS.read_text(), "tables_without_rls", "warning", "0")
    (tmp_path / "thresholds.yaml").write_text(text)
    result = CliRunner().invoke(main, ["bundle", "--thresholds", str(tmp_path / "thresholds.yaml"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    enabled = yaml.safe_load((tmp_path / "out" / "alerts" / "pgvigil-alerts.yml").read_text())
    assert "PostgresTablesWithoutRls" in {rule.get("alert") for group in enabled["groups"] for rule in group["rules"]}


def _severities_expected(test: dict, alertname: str) -> set[str]:
    last = [c for c in test["alert_rule_test"] if c["alertname"] == alertname][-1]
    return {alert["exp_labels"]["severity"] for alert in last["exp_alerts"]}


@needs_promtool
def test_changed_thresholds_move_rules_and_tests(tmp_path):
    text = THRESHOLDS.read_text()
    text = _set_level(text, "connection_utilization", "warning", "0.70")
    text = _set_level(text, "database_size", "critical", "20000000000")
    text = _set_level(text, "cache_hit_ratio", "warning", "0.97")
    mine = tmp_path / "my-thresholds.yaml"
    mine.write_text(text)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["bundle", "--thresholds", str(mine), "--out", str(out)])
    assert result.exit_code == 0, result.output

    alerts = (out / ALERT_FILES["alerts"]).read_text()
    assert "pgvigil:connection_utilization:ratio > 0.7\n" in alerts
    assert "pg_database_size_bytes > 20000000000\n" in alerts
    assert "pgvigil:cache_hit:ratio_rate5m < 0.97 and" in alerts
    assert "pgvigil:connection_utilization:ratio > 0.8\n" not in alerts
    tests = (out / ALERT_FILES["tests"]).read_text()
    assert "PostgresConnectionUtilizationHigh warning fires just past 70%" in tests

    # the new tests pass against the new rules ...
    new = run("promtool", "test", "rules", ALERT_FILES["tests"].name, cwd=out / "alerts" / "tests")
    assert new.returncode == 0, new.stdout + new.stderr
    # ... and fail against the shipped rules: they really moved with the numbers
    shutil.copy(ROOT / ALERT_FILES["rules"], out / ALERT_FILES["rules"])
    shutil.copy(ROOT / ALERT_FILES["alerts"], out / ALERT_FILES["alerts"])
    old = run("promtool", "test", "rules", ALERT_FILES["tests"].name, cwd=out / "alerts" / "tests")
    assert old.returncode != 0
    for moved in ("PostgresConnectionUtilizationHigh warning fires just past 70%",
                  "PostgresDatabaseSizeLarge critical fires just past 20GB",
                  "PostgresCacheHitRatioLow warning fires just past 97%"):
        assert moved in old.stdout + old.stderr


def _set_level(text: str, name: str, key: str, value: str) -> str:
    pattern = re.compile(rf"(^{name}:.*?^  {key}: )\S+", re.M | re.S)
    changed, count = pattern.subn(rf"\g<1>{value}", text, count=1)
    assert count == 1
    return changed


def test_bundle_writes_alert_files(tmp_path):
    written = write_bundle(None, tmp_path)
    for relative in ALERT_FILES.values():
        assert tmp_path / relative in written
    # the application examples' group is opt-in: neither written nor in the committed bundle
    for relative in EXAMPLE_FILES.values():
        assert not (tmp_path / relative).exists() and not (ROOT / relative).exists()


@needs_promtool
def test_bundle_with_examples_adds_their_group(tmp_path):
    result = CliRunner().invoke(main, ["bundle", "--with-examples", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output

    rules = tmp_path / EXAMPLE_FILES["rules"]
    assert f"{rules}\n" in result.output and f"{tmp_path / EXAMPLE_FILES['tests']}\n" in result.output
    assert rules.read_text().endswith(EXAMPLE_RULES.read_text())  # copied as written, comments included
    groups = yaml.safe_load(rules.read_text())["groups"]
    assert [g["name"] for g in groups] == ["pgvigil-app-examples"]
    # the generated files are the same as without the flag
    for relative, text in render_alert_files(load_thresholds(), source_name(DEFAULT_THRESHOLDS)).items():
        assert (tmp_path / relative).read_text() == text
    checked = run("promtool", "check", "rules", str(tmp_path / ALERT_FILES["rules"]),
                  str(tmp_path / ALERT_FILES["alerts"]), str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"Checking {rules}\n  SUCCESS: {len(groups[0]['rules'])} rules found" in checked.stdout
    tests_dir = tmp_path / "alerts" / "tests"
    for test_file in (ALERT_FILES["tests"], EXAMPLE_FILES["tests"]):
        tested = run("promtool", "test", "rules", test_file.name, cwd=tests_dir)
        assert tested.returncode == 0, tested.stdout + tested.stderr


def test_example_group_needs_the_examples_directory(tmp_path):
    with pytest.raises(BundleError) as caught:
        render_example_files(tmp_path / "examples" / "alerts" / "app-rules.yml")
    assert str(caught.value) == (
        f"--with-examples needs {tmp_path / 'examples' / 'alerts' / 'app-rules.yml'}: the example rules "
        "come with a clone of the pgvigil repository, not with the installed package")


@pytest.mark.parametrize("text, message", [
    ("a:\n  warning: x\n  critical: 1\n  for: 5m\n  unit: ratio\n  description: d\n",
     "t.yaml:2: a.warning: expected a number or null, got 'x'"),
    ("a:\n  warning: 1\n  critical: 2\n  fro: 5m\n  unit: count\n  description: d\n",
     "t.yaml:4: a.fro: unknown key (did you mean 'for'?); "
     "allowed: warning, critical, for, unit, direction, min_rate, min_bytes, description"),
    ("a:\n  warning: 1\n  critical: 2\n  for: 5 minutes\n  unit: count\n  description: d\n",
     "t.yaml:4: a.for: expected a Prometheus duration such as 5m or 1h30m, got '5 minutes'"),
    ("a:\n  warning: 3\n  critical: 2\n  for: 5m\n  unit: count\n  description: d\n",
     "t.yaml:3: a.critical: must be >= warning (3) when direction is above"),
    ("a:\n  warning: 0.8\n  critical: 0.9\n  direction: below\n  for: 5m\n  unit: ratio\n  description: d\n",
     "t.yaml:3: a.critical: must be <= warning (0.8) when direction is below"),
    ("a:\n  warning: 1\n  critical: 2\n  for: 5m\n  unit: parsecs\n  description: d\n",
     "t.yaml:5: a.unit: expected one of ratio, seconds, bytes, count, boolean, got 'parsecs'"),
    ("a:\n  warning: 1\n  critical: 2\n  unit: count\n  description: d\n",
     "t.yaml:1: a: missing key 'for'"),
    ("a: [1, 2\n", "t.yaml:2: invalid YAML"),
])
def test_invalid_thresholds_name_file_line_and_key(text, message):
    with pytest.raises(ThresholdError) as caught:
        parse_thresholds(text, "t.yaml")
    assert any(error.startswith(message) for error in caught.value.errors), caught.value.errors


def test_bundle_command_reports_every_threshold_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a:\n  warning: x\n  critical: 1\n  for: soon\n  unit: ratio\n  description: d\n")
    result = CliRunner().invoke(main, ["bundle", "--thresholds", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"error: {bad}:2: a.warning: expected a number or null, got 'x'" in result.output
    assert f"error: {bad}:4: a.for: expected a Prometheus duration" in result.output
    assert "Traceback" not in result.output


def test_thresholds_missing_an_alert_entry_is_a_clear_error(tmp_path):
    text = re.sub(r"^postgres_down:.*?\n\n", "", THRESHOLDS.read_text(), flags=re.M | re.S)
    mine = tmp_path / "partial.yaml"
    mine.write_text(text)
    result = CliRunner().invoke(main, ["bundle", "--thresholds", str(mine), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert (f"error: {mine}: postgres_down: missing: every alert needs its entry; copy it from the shipped "
            "thresholds (alerts/thresholds.yaml)") in result.output
    assert "Traceback" not in result.output


def test_missing_entries_are_reported_with_the_other_errors_at_once(tmp_path):
    """A file from an older pgvigil with a typo: the typo, the bad value and the entries newer alerts need, all
    in one run, each with its file (and line where it has one)."""
    text = THRESHOLDS.read_text()
    text = re.sub(r"^alertmanager_cluster_members:.*?(?=^\S|\Z)", "", text, flags=re.M | re.S)
    text = re.sub(r"^postgres_down:", "postgres_dwon:", text, flags=re.M)
    text = re.sub(r"^(exporter_scrape_overrun:.*?\n  warning: ).*?\n", "\\1two\n", text, flags=re.M | re.S)
    mine = tmp_path / "old.yaml"
    mine.write_text(text)
    result = CliRunner().invoke(main, ["bundle", "--thresholds", str(mine), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert any(re.match(rf"error: {re.escape(str(mine))}:\d+: exporter_scrape_overrun.warning: expected a number", e)
               for e in errors), errors
    assert f"error: {mine}: alertmanager_cluster_members: missing: every alert needs its entry; copy it from the " \
           "shipped thresholds (alerts/thresholds.yaml)" in errors
    assert f"error: {mine}: postgres_down: missing: every alert needs its entry (is postgres_dwon a typo of it?)" \
           in "\n".join(errors)
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("function, value, text", [
    (humanize, 1234567.0, "1.235M"), (humanize, 0.005, "5m"), (humanize, 0, "0"), (humanize, 50, "50"),
    (humanize1024, 1048576.0, "1Mi"), (humanize_duration, 899.99, "14m 59s"),
    (humanize_duration, 93600, "1d 2h 0m 0s"), (humanize_duration, 0.5, "500ms"), (humanize_duration, 5.5, "5.5s"),
    (humanize_percentage, 0.1234567, "12.35%"), (humanize_percentage, 0.8, "80%"),
])
def test_humanize_twins_match_prometheus(function, value, text):
    assert function(value) == text


def _pack_metrics() -> dict[str, tuple[str, ...]]:
    """Metric name -> label columns, for every query of every shipped pack."""
    from exporter.config import available_packs, parse_config

    packs = ", ".join(sorted(available_packs()))
    config = parse_config(f"targets:\n  p: {{dsn: postgresql://x@127.0.0.1:1/app}}\ncollectors: [{packs}]\n")
    return {metric.name: tuple(query.labels) for query in config.queries for metric in query.metrics}


def test_rules_and_tests_use_the_series_pgvigil_really_exposes():
    """Every input series of the promtool tests is a metric a pack, the backup collector or the
    exporter itself produces, with exactly that metric's labels (plus target and constant labels)."""
    from exporter.bundle.catalog import BASE

    packs = _pack_metrics()
    python_sources = "".join(p.read_text() for p in [ROOT / "exporter" / "scrape" / "selfmetrics.py",
                                                     *sorted((ROOT / "exporter" / "backup").glob("*.py")),
                                                     ROOT / "exporter" / "serverlog" / "metrics.py"])
    user_supplied = {"up", "pgvigil_storage_allocation_bytes"}  # Prometheus' own; documented custom query
    user_supplied |= monitoring.FOREIGN_METRICS  # Prometheus' and Alertmanager's own, for the meta alerts
    if 'for prefix in ("pgvigil", "postgres_exporter")' in python_sources:  # selfmetrics formats these names
        python_sources += "".join(f'"{prefix}_config_last_reload_successful"' for prefix in ("pgvigil",))
    tests = yaml.safe_load(TEST_FILE.read_text())["tests"]
    seen = set()
    for series in (s["series"] for t in tests for s in t["input_series"]):
        name, labels = re.fullmatch(r"(\w+)\{(.*)\}", series).groups()
        keys = set(re.findall(r'(\w+)="', labels)) - set(BASE) - {"le"}
        base = re.sub(r"_(bucket|gcount|gsum)$", "", name)
        if name in user_supplied:
            continue
        if base in packs:
            assert keys == set(packs[base]), f"{series}: the pack's labels are {packs[base]}"
        else:
            assert f'"{name}"' in python_sources, f"{name}: no pack or collector exposes it"
        seen.add(name)
    rule_text = (ROOT / ALERT_FILES["alerts"]).read_text() + (ROOT / ALERT_FILES["rules"]).read_text()
    used = set(re.findall(r"\b(pg_[a-z0-9_]+|pgvigil_[a-z0-9_]+)\b", rule_text)) - user_supplied
    assert used <= seen, f"metrics used by rules but never in a test: {sorted(used - seen)}"


def _scaled(threshold, factor: float) -> dict:
    """New levels for one entry, keeping their order and the healthy test database healthy: ratios
    move within (0, 1) (1 - (1 - r)**factor above, r**factor below), whole numbers are scaled and
    rounded (never below 1 when they were at least 1), seconds scaled."""
    def scale(level):
        if level is None or threshold.unit == "boolean" or (threshold.unit == "bytes" and level <= 1):
            return level
        if threshold.unit == "ratio" and threshold.direction == "below":
            return round(level ** factor, 4)
        if threshold.unit == "ratio":
            return round(1 - (1 - level) ** factor, 4)
        if threshold.unit in ("count", "bytes"):
            return max(round(level * factor), 1 if level >= 1 else 0)
        return round(level * factor, 3)
    return {"warning": scale(threshold.warning), "critical": scale(threshold.critical)}


@needs_promtool
@pytest.mark.parametrize("factor", [0.37, 1.93])
def test_generated_tests_hold_for_other_numbers(tmp_path, factor):
    """Any valid thresholds give rules whose generated tests pass: the scenarios follow the levels."""
    document = yaml.safe_load(THRESHOLDS.read_text())
    for name, threshold in load_thresholds().items():
        document[name].update(_scaled(threshold, factor))
    mine = tmp_path / "scaled.yaml"
    mine.write_text(yaml.safe_dump(document, sort_keys=False))
    write_bundle(mine, tmp_path / "out")
    result = run("promtool", "test", "rules", ALERT_FILES["tests"].name, cwd=tmp_path / "out" / "alerts" / "tests")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def layout(tmp_path: Path, clone: bool) -> Path:
    """This pgvigil's package where pip would put it (site/exporter), or in a copy of a clone (with the
    repository's pyproject.toml and alerts/thresholds.yaml beside it); returns the directory for PYTHONPATH."""
    root = tmp_path / ("clone" if clone else "site")
    shutil.copytree(ROOT / "exporter", root / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    if clone:
        shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
        (root / "alerts").mkdir()
        shutil.copy(THRESHOLDS, root / "alerts" / "thresholds.yaml")
    return root


def bundle_from(package_root: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "exporter", "bundle", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(package_root)))


def test_an_installed_pgvigil_wants_out_and_writes_nothing_into_the_current_directory(tmp_path):
    site = layout(tmp_path, clone=False)
    result = bundle_from(site, tmp_path / "work")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "Error: give --out DIR, the directory to write alerts/ and dashboards/ into: this pgvigil is an installed "
        "package, and only in a clone of the repository does bundle default to the clone's root")
    assert list((tmp_path / "work").iterdir()) == []
    result = bundle_from(site, tmp_path / "work", "--out", "deploy")
    assert result.returncode == 0, result.stderr
    assert "deploy/alerts/pgvigil-alerts.yml" in result.stdout.splitlines()
    assert (tmp_path / "work" / "deploy" / "dashboards").is_dir()


def test_in_a_clone_bundle_without_out_writes_into_the_clone_and_says_so(tmp_path):
    clone = layout(tmp_path, clone=True)
    result = bundle_from(clone, tmp_path / "work")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"no --out: writing into the clone of the repository at {clone}"
    assert f"{clone}/alerts/pgvigil-alerts.yml" in result.stdout.splitlines()
    assert list((tmp_path / "work").iterdir()) == []
