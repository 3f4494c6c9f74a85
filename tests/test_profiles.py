"""Threshold profiles: a declared override of the one thresholds file (the demo's short waits)."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from exporter.bundle.profiles import ProfileError, apply_profile, load_profile, parse_profile, profile_names
from exporter.bundle.thresholds import load_thresholds
from exporter.cli import main


def test_the_demo_profile_caps_every_wait_and_lowers_the_ages():
    shipped = load_thresholds()
    demo = apply_profile(shipped, load_profile("demo"))
    assert set(demo) == set(shipped)
    assert {t.for_ for t in demo.values()} <= {"10s", "0", "0s", "0m"}
    assert demo["idle_in_transaction"].levels() == {"warning": 20, "critical": 45}
    assert demo["long_running_query"].levels() == {"warning": 20, "critical": 45}
    # everything else is the thresholds file's own number
    assert demo["dead_tuples"].levels() == shipped["dead_tuples"].levels()
    assert demo["dead_tuples"].description == shipped["dead_tuples"].description
    assert shipped["idle_in_transaction"].for_ == "1m", "applying a profile changed the shipped thresholds"


def test_a_shorter_wait_than_the_cap_is_kept():
    shipped = load_thresholds()
    profile = parse_profile("description: d\nfor_at_most: 1h\nthresholds:\n  dead_tuples: {for: 30s}\n", "p")
    changed = apply_profile(shipped, profile)
    assert changed["dead_tuples"].for_ == "30s"
    assert changed["postgres_down"].for_ == shipped["postgres_down"].for_  # 1m, under the cap
    assert changed["backup_never_succeeded"].for_ == "1h"  # 26h, capped


@pytest.mark.parametrize("text, message", [
    ("for_at_most: 10s\n", "p.yaml:1: (top level): missing required key 'description'"),
    ("description: d\nfor_at_most: 5x\n",
     "p.yaml:2: for_at_most: expected a Prometheus duration such as 10s or 1m, got '5x'"),
    ("description: d\nthresholds:\n  dead_tuples: {warnign: 1}\n",
     "p.yaml:3: thresholds.dead_tuples.warnign: unknown key 'warnign'; did you mean 'warning'?"),
    ("description: d\nthresholds:\n  dead_tuples: {warning: many}\n",
     "p.yaml:3: thresholds.dead_tuples.warning: expected a finite number, got the string 'many'"),
    ("description: d\nthresholds:\n  dead_tuple: {warning: 1}\n",
     "p.yaml:3: thresholds.dead_tuple: no such threshold in the thresholds file (did you mean 'dead_tuples'?)"),
    ("description: d\nthresholds:\n  dead_tuples:\n    warning: 60000\n",
     "p.yaml:3: thresholds.dead_tuples: warning 60000 and critical 50000 are out of order (direction above)"),
    ("description: d\nthresholds:\n  cache_hit_ratio: {warning: 0.5}\n",
     "p.yaml:3: thresholds.cache_hit_ratio: warning 0.5 and critical 0.8 are out of order (direction below)"),
])
def test_profile_errors_name_file_line_and_key(text, message):
    with pytest.raises(ProfileError) as raised:
        apply_profile(load_thresholds(), parse_profile(text, "p", "p.yaml"))
    assert message in raised.value.errors, raised.value.errors


def test_an_unknown_profile_is_named_with_a_suggestion():
    assert "demo" in profile_names()
    with pytest.raises(ProfileError) as raised:
        load_profile("dmeo")
    assert raised.value.errors == ["unknown profile 'dmeo'; did you mean 'demo'?"]


def test_bundle_writes_the_demo_profile_only_where_asked(tmp_path):
    result = CliRunner().invoke(main, ["bundle", "--profile", "demo"])
    assert result.exit_code == 2 and "--profile writes a variant of the bundle: give --out DIR" in result.output
    result = CliRunner().invoke(main, ["bundle", "--profile", "demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "alerts" / "pgvigil-alerts.yml").read_text()
    assert "(alerts/thresholds.yaml, profile demo)" in text.splitlines()[0]
    waits = {rule.get("for") for group in yaml.safe_load(text)["groups"] for rule in group["rules"]}
    assert waits <= {"10s", None}, waits
