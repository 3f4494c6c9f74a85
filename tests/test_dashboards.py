"""The generated Grafana dashboards: structure Grafana needs, conventions, bands equal to the thresholds."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from exporter.bundle.dashboards import NEEDS_ENVIRONMENT, build_dashboards, dashboards, write_dashboards
from exporter.bundle.grafana import SCHEMA_VERSION
from exporter.bundle.thresholds import load_thresholds, parse_thresholds

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS_FILE = ROOT / "alerts" / "thresholds.yaml"
DASHBOARD_DIR = ROOT / "dashboards"
STABLE_UIDS = {  # uids are part of every bookmarked URL: never change them
    "overview.json": "pgvigil-overview",
    "queries.json": "pgvigil-queries",
    "storage.json": "pgvigil-storage",
    "replication.json": "pgvigil-replication",
    "security.json": "pgvigil-security",
    "vector.json": "pgvigil-vector",
    "pgbouncer.json": "pgvigil-pgbouncer",
    "exporter.json": "pgvigil-exporter",
    "slos.json": "pgvigil-slos",
    "diagnosis.json": "pgvigil-diagnosis",
}
ANGULAR_TYPES = {"graph", "singlestat", "table-old", "grafana-piechart-panel", "grafana-worldmap-panel",
                 "natel-discrete-panel", "grafana-polystat-panel", "heatmap-old"}
MODERN_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text", "row", "alertlist",
                "piechart", "barchart", "state-timeline", "status-history", "histogram", "logs", "nodeGraph"}
DASHBOARD_KEYS = {"uid", "title", "description", "schemaVersion", "version", "panels", "templating", "time", "tags",
                  "editable", "timezone", "refresh", "annotations"}
PANEL_KEYS = {"id", "type", "title", "description", "gridPos", "datasource", "targets", "fieldConfig", "options"}
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
VARIABLE_USE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
BUILTIN_ANNOTATIONS_REF = {"type": "grafana", "uid": "-- Grafana --"}


@pytest.fixture(scope="module")
def thresholds():
    return load_thresholds(THRESHOLDS_FILE)


@pytest.fixture(scope="module")
def committed() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels_of(committed: dict[str, dict]):
    for name, model in committed.items():
        for panel in model["panels"]:
            yield name, model, panel


def walk(node, key: str):
    """Every value stored under `key` anywhere in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def test_committed_dashboards_equal_generator_output(tmp_path, thresholds):
    written = write_dashboards(thresholds, tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in DASHBOARD_DIR.glob("*.json")), \
        "dashboards/ holds files the generator does not write, or misses some: run `pgvigil bundle`"
    for path in written:
        assert path.read_bytes() == (DASHBOARD_DIR / path.name).read_bytes(), \
            f"dashboards/{path.name} differs from the generator output: run `pgvigil bundle`, never hand-edit"


def test_every_dashboard_has_its_stable_uid(committed):
    assert {name: model["uid"] for name, model in committed.items()} == STABLE_UIDS
    titles = [model["title"] for model in committed.values()]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", sorted(STABLE_UIDS))
def test_dashboard_has_required_fields_and_current_schema(committed, name):
    model = committed[name]
    assert DASHBOARD_KEYS <= model.keys(), f"missing {DASHBOARD_KEYS - model.keys()}"
    assert model["schemaVersion"] >= 39 and model["schemaVersion"] == SCHEMA_VERSION
    assert model["id"] is None, "a fixed id clashes with dashboards already in the Grafana database"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", model["uid"])
    assert model["panels"], "empty dashboard"


@pytest.mark.parametrize("name", sorted(STABLE_UIDS))
def test_panel_ids_unique_and_grid_inside_24_columns(committed, name):
    panels = committed[name]["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"}
        assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] > 0 and grid["h"] > 0
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']!r} sticks out of the 24 columns: {grid}"
        boxes.append((panel["title"], grid))
    for i, (title_a, a) in enumerate(boxes):
        for title_b, b in boxes[i + 1:]:
            overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                       and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
            assert not overlap, f"panels {title_a!r} and {title_b!r} overlap in {name}"


def test_panels_have_required_fields_and_no_angular_types(committed):
    for name, _, panel in panels_of(committed):
        assert PANEL_KEYS <= panel.keys(), f"{name}/{panel.get('title')}: missing {PANEL_KEYS - panel.keys()}"
        assert panel["type"] not in ANGULAR_TYPES, f"{name}/{panel['title']}: Angular panel type {panel['type']}"
        assert panel["type"] in MODERN_TYPES, f"{name}/{panel['title']}: unexpected panel type {panel['type']}"
        assert panel["title"].strip() and panel["description"].strip()
        assert panel["targets"], f"{name}/{panel['title']}: no queries"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_panel_titles_unique_per_dashboard(committed):
    for name, model in committed.items():
        titles = [p["title"] for p in model["panels"]]
        assert len(titles) == len(set(titles)), f"{name}: NEEDS_ENVIRONMENT and the live test key panels by title"


def test_every_datasource_reference_resolves_to_the_variable(committed):
    for name, model in committed.items():
        text = json.dumps(model)
        assert "${DS_" not in text and "__inputs" not in model, \
            f"{name}: import placeholders break file provisioning"
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for ref in walk(model, "datasource"):
            if isinstance(ref, dict) and ref.get("type") == "grafana":
                assert ref == BUILTIN_ANNOTATIONS_REF
                continue
            assert ref == DATASOURCE_REF, f"{name}: datasource reference {ref!r} is not the variable"


def test_variables_used_in_queries_are_defined(committed):
    for name, model in committed.items():
        defined = {v["name"] for v in model["templating"]["list"]}
        # PostgreSQL dashboards pick targets; the PgBouncer dashboard picks poolers (kind: pgbouncer targets).
        assert "datasource" in defined and len(defined & {"target", "pooler"}) == 1
        texts = [t["expr"] for _, _, panel in panels_of({name: model}) for t in panel["targets"]]
        texts += [v["definition"] for v in model["templating"]["list"] if v["type"] == "query"]
        for text in texts:
            for match in VARIABLE_USE.finditer(text):
                used = match.group(1) or match.group(2)
                assert used in defined or used in GRAFANA_VARIABLES, f"{name}: ${used} is not defined in {text}"
        for variable in model["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE_REF


def test_units_and_legends_are_set(committed):
    for name, _, panel in panels_of(committed):
        where = f"{name}/{panel['title']}"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        for target in panel["targets"]:
            assert target.get("legendFormat", "").strip(), f"{where}: query {target['refId']} has no legend"
            assert target["datasource"] == DATASOURCE_REF
        if panel["type"] == "timeseries":
            assert panel["options"]["legend"]["showLegend"] is True
        if panel["type"] == "heatmap":
            assert panel["options"]["yAxis"]["unit"] == panel["fieldConfig"]["defaults"]["unit"]


def band_levels(panel: dict) -> list[float]:
    return [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]


def banded_panels(thresholds) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, threshold key) for every panel whose bands come from the file."""
    return [(spec.uid, panel.title, panel.threshold)
            for spec in dashboards(thresholds) for panel in spec.panels if panel.threshold]


def test_threshold_steps_equal_the_thresholds_file(committed, thresholds):
    by_key = {(model["uid"], panel["title"]): panel for _, model, panel in panels_of(committed)}
    checked = banded_panels(thresholds)
    assert len(checked) >= 15
    for uid, title, key in checked:
        panel = by_key[(uid, title)]
        expected = sorted(thresholds[key].levels().values())
        assert band_levels(panel) == expected, f"{uid}/{title}: bands {band_levels(panel)} != {key} {expected}"
        colors = [s["color"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        assert colors[-1 if thresholds[key].direction == "above" else 0] == "red" \
            or thresholds[key].critical is None
        if panel["type"] == "timeseries":
            assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line+area"


@pytest.mark.parametrize(("uid", "title", "key"), [
    ("pgvigil-overview", "Connections against max", "connection_utilization"),
    ("pgvigil-overview", "Cache hit ratio", "cache_hit_ratio"),
    ("pgvigil-overview", "Database size", "database_size"),
    ("pgvigil-overview", "Longest running query", "long_running_query"),
    ("pgvigil-replication", "WAL archive age against the RPO", "wal_archive_age"),
    ("pgvigil-replication", "Backup age", "backup_age"),
])
def test_the_issue_bands_come_from_the_right_thresholds(thresholds, uid, title, key):
    assert (uid, title, key) in banded_panels(thresholds)


def test_changed_thresholds_move_the_bands():
    text = re.sub(r"connection_utilization:.*\n  warning: 0.80\n  critical: 0.95",
                  "connection_utilization:\n  warning: 0.70\n  critical: 0.90",
                  THRESHOLDS_FILE.read_text(encoding="utf-8"))
    changed = parse_thresholds(text, "changed.yaml")
    assert changed["connection_utilization"].warning == 0.70, "the test's replacement no longer matches the file"
    overview = build_dashboards(changed)["overview.json"]
    panel = next(p for p in overview["panels"] if p["title"] == "Connections against max")
    assert band_levels(panel) == [0.70, 0.90]


def test_lower_is_worse_thresholds_turn_green_upwards(committed):
    overview = committed["overview.json"]
    panel = next(p for p in overview["panels"] if p["title"] == "Cache hit ratio")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["color"] for s in steps] == ["red", "orange", "green"]


def test_needs_environment_names_existing_panels(committed):
    keys = {f"{model['uid']}/{panel['title']}" for _, model, panel in panels_of(committed)}
    assert set(NEEDS_ENVIRONMENT) <= keys, f"stale entries: {set(NEEDS_ENVIRONMENT) - keys}"
    assert all(reason.strip() for reason in NEEDS_ENVIRONMENT.values())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (scripts/test.sh installs it)")
def test_every_panel_query_is_valid_promql(committed, tmp_path):
    """promtool parses each expression as a recording rule; the live test then runs them."""
    substitutes = {"target": ".*", "datname": ".*", "pooler": ".*", "__rate_interval": "1m", "__interval": "15s",
                   "__range": "1h"}
    rules = []
    for _name, _, panel in panels_of(committed):
        for target in panel["targets"]:
            expr = VARIABLE_USE.sub(lambda m: substitutes[m.group(1) or m.group(2)], target["expr"])
            rules.append({"record": f"panel:query{len(rules)}", "expr": expr})
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
