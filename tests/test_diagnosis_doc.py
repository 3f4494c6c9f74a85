"""docs/diagnosis.md answers "why" for every shipped alert: each alert of the generated rule files has
a row there, and each dashboard it names exists."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from exporter.bundle.catalog import catalog

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "diagnosis.md"


def shipped_alerts() -> set[str]:
    names = set()
    for path in [*(ROOT / "alerts").glob("pgvigil-*.yml"), ROOT / "deploy" / "fleet" / "pgvigil-fleet-alerts.yml"]:
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            names |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
    return names


def test_every_shipped_alert_has_its_why():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| Postgres")]
    named = {name for row in rows for name in re.findall(r"Postgres[A-Za-z]+", row.split("|")[1])}
    assert shipped_alerts() - named == set()
    opt_in = {spec.name for spec in catalog()}  # alerts off by default (both levels null) are in the catalog only
    assert named - shipped_alerts() - opt_in == set(), "rows for alerts pgvigil does not have"


def test_the_dashboards_it_names_exist():
    titles = {yaml.safe_load(path.read_text())["title"] for path in (ROOT / "dashboards").glob("*.json")}
    legend = DOC.read_text().split("## Alert by alert", 1)[1].split("###", 1)[0]
    for title in re.findall(r'`[A-Za-z]+:` "([^"]+)"', legend):
        assert " ".join(title.split()) in titles, title
