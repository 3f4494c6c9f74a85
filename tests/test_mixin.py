"""The jsonnet mixin (`pgvigil bundle --mixin DIR`), rendered with the `jsonnet` package: with its default
`_config` it is the bundle's own rules, alerts and dashboards; `_config` changes the selector, the group
labels (as `--cluster-label` does) and the runbook links; the committed mixin/ is the generator's output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from exporter.bundle import ALERT_FILES, kubernetes, load_inputs
from exporter.bundle.mixin import FILES, pieces, render
from exporter.cli import main

_jsonnet = pytest.importorskip("_jsonnet", reason="the jsonnet package (test extra) is not installed")

ROOT = Path(__file__).resolve().parents[1]
MIXIN = ROOT / "mixin"


def rendered(config: str = "{}") -> dict:
    snippet = (f"local m = (import 'mixin.libsonnet') + {{ _config+:: {config} }};\n"
               "{ rules: m.prometheusRules, alerts: m.prometheusAlerts, dashboards: m.grafanaDashboards }")
    return json.loads(_jsonnet.evaluate_snippet("render.jsonnet", snippet, jpathdir=str(MIXIN)))


def shipped(key: str) -> list[dict]:
    return yaml.safe_load((ROOT / ALERT_FILES[key]).read_text())["groups"]


def test_committed_mixin_is_the_generator_output():
    files = render(load_inputs(None, None))
    assert sorted(files) == sorted(FILES) == sorted(p.name for p in MIXIN.iterdir())
    stale = [name for name, text in files.items() if (MIXIN / name).read_text() != text]
    assert not stale, f"regenerate with `pgvigil bundle --mixin mixin`: {', '.join(stale)} differ"


def test_default_mixin_equals_the_bundle_files():
    out = rendered()
    assert out["rules"] == {"groups": shipped("rules") + shipped("slos")}
    assert out["alerts"] == {"groups": shipped("alerts")}
    assert out["dashboards"] == {path.name: json.loads(path.read_text())
                                 for path in sorted((ROOT / "dashboards").glob("*.json"))}


def test_group_labels_are_the_cluster_label_of_the_bundle():
    out = rendered("{ groupLabels: ['cluster'] }")
    expected = kubernetes.rule_groups(load_inputs(None, None), "cluster")
    by_name = {group["name"]: group for group in expected}
    assert out["rules"]["groups"] == [by_name[g["name"]] for g in shipped("rules") + shipped("slos")]
    assert out["alerts"]["groups"] == [by_name[g["name"]] for g in shipped("alerts")]
    exprs = [rule["expr"] for group in out["alerts"]["groups"] for rule in group["rules"]]
    assert any("by (job, instance, target, database, cluster)" in expr for expr in exprs)


def test_selector_and_runbook_base_are_configurable():
    out = rendered("{ pgvigilSelector: 'job=\"pg\"', runbookBase: 'https://wiki.example.com/pg' }")
    alerts = [rule for group in out["alerts"]["groups"] for rule in group["rules"]]
    exporter_down = next(rule for rule in alerts if rule["alert"] == "PostgresExporterDown")
    assert 'job="pg"' in exporter_down["expr"] and 'job="pgvigil"' not in exporter_down["expr"]
    assert all(rule["annotations"]["runbook_url"].startswith("https://wiki.example.com/pg#") for rule in alerts)


def test_pieces_keep_the_text_and_find_the_lists():
    assert pieces('sum by(job, target) (up{job="pgvigil"}) / on (a) b') == [
        "sum ", {"kw": "by", "names": ["job", "target"], "raw": "by(job, target)"}, " (up{",
        {"selector": True}, "}) / ", {"kw": "on", "names": ["a"], "raw": "on (a)"}, " b"]


def test_mixin_option_writes_only_the_mixin(tmp_path):
    result = CliRunner().invoke(main, ["bundle", "--mixin", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(FILES)
    result = CliRunner().invoke(main, ["bundle", "--mixin", str(tmp_path / "n"), "--cluster-label", "cluster"])
    assert result.exit_code != 0 and "its _config sets group labels" in result.output


def rendered_from(directory: Path) -> dict:
    snippet = ("local m = import 'mixin.libsonnet';\n"
               "{ rules: m.prometheusRules, alerts: m.prometheusAlerts, config: m._config }")
    return json.loads(_jsonnet.evaluate_snippet("render.jsonnet", snippet, jpathdir=str(directory)))


@pytest.mark.parametrize("base", ["https://wiki.example.com/pg", "https://wiki.example.com/pg?a=1&b=(2)*"])
def test_runbook_base_option_is_the_mixins_default(tmp_path, base):
    """--runbook-base sets `_config.runbookBase`, as a jsonnet string whatever URL characters it has."""
    result = CliRunner().invoke(main, ["bundle", "--mixin", str(tmp_path / "m"), "--runbook-base", base])
    assert result.exit_code == 0, result.output
    out = rendered_from(tmp_path / "m")
    assert out["config"]["runbookBase"] == base
    alerts = [rule for group in out["alerts"]["groups"] for rule in group["rules"]]
    assert alerts and all(rule["annotations"]["runbook_url"].startswith(f"{base}#") for rule in alerts)


def test_bad_runbook_base_is_refused_for_the_mixin(tmp_path):
    result = CliRunner().invoke(main, ["bundle", "--mixin", str(tmp_path / "m"), "--runbook-base", "a b#c"])
    assert result.exit_code == 1
    assert "error: --runbook-base 'a b#c': expected an http(s) URL" in result.output
    assert not (tmp_path / "m").exists()
