"""The pgvigil Grafana dashboards: what each panel shows, with bands from the alert thresholds.

One module per dashboard, each a `dashboard(builder)` made of a few short functions, one per
group of panels (in the order Grafana lays them out). `panels.py` holds what they share.
``write_dashboards`` renders them to ``<out_dir>/dashboards/<name>.json``; ``pgvigil bundle``
calls it next to the alert rules so both always use the same warning/critical levels.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.bundle.dashboards import (
    diagnosis,
    exporter_health,
    overview,
    pgbouncer,
    queries,
    replication,
    security,
    slos,
    storage,
    vector,
)
from exporter.bundle.dashboards.panels import PanelBuilder, levels
from exporter.bundle.grafana import Dashboard, render_dashboard

DASHBOARDS = (overview, queries, storage, replication, security, vector, pgbouncer, exporter_health, slos,
              diagnosis)

# Panels whose queries can only return data where the environment has something the live test
# (tests/e2e/test_dashboards_live.py) and `pgvigil demo` cannot have. Key: "<dashboard uid>/<panel title>".
# Empty: the live test runs the demo on PostgreSQL 18 with pgvector, a subscription and a running vacuum.
NEEDS_ENVIRONMENT: dict[str, str] = {}


def dashboards(thresholds: Mapping[str, Any]) -> list[Dashboard]:
    """Every shipped dashboard, its bands taken from these thresholds."""
    builder = PanelBuilder(thresholds)
    return [module.dashboard(builder) for module in DASHBOARDS]


def dashboard_file_name(spec: Dashboard) -> str:
    return spec.uid.removeprefix("pgvigil-") + ".json"


def build_dashboards(thresholds: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """File name -> Grafana dashboard JSON model, for every shipped dashboard."""
    return {dashboard_file_name(spec): render_dashboard(spec) for spec in dashboards(thresholds)}


def write_dashboards(thresholds: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write every dashboard to ``out_dir/dashboards/<name>.json``; returns the paths written."""
    folder = Path(out_dir) / "dashboards"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in build_dashboards(thresholds).items():
        path = folder / name
        path.write_text(json.dumps(model, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


__all__ = ["DASHBOARDS", "NEEDS_ENVIRONMENT", "PanelBuilder", "build_dashboards", "dashboard_file_name",
           "dashboards", "levels", "write_dashboards"]
