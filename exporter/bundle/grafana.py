"""Dashboard specs -> Grafana dashboard JSON model (schemaVersion 39, no Angular panels).

Only what Grafana needs to render a panel is emitted, always in the same order, so the
generated files are byte-stable and a test can compare them with the committed ones.
Every panel and query points at the ``datasource`` template variable: file provisioning
cannot resolve the ``${DS_...}`` placeholders of exported dashboards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24
PANEL_KINDS = ("timeseries", "stat", "gauge", "bargauge", "table", "heatmap")

# Colors of threshold steps: the base, then warning, then critical.
OK, WARNING, CRITICAL = "green", "orange", "red"


@dataclass(frozen=True)
class Query:
    """One PromQL target. ``legend`` is a Grafana legend format such as ``{{datname}}``."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Bands:
    """Threshold steps: (color, value) pairs, the first value being None (the base)."""

    steps: tuple[tuple[str, Optional[float]], ...]

    @classmethod
    def from_levels(cls, warning: Optional[float], critical: Optional[float], direction: str = "above") -> "Bands":
        """Alert levels to colored bands; either level may be absent. Grafana colors a value with
        the last step at or below it, so "below" thresholds start red and turn green upwards."""
        if direction == "below":
            if warning is not None and critical is not None:
                return cls(((CRITICAL, None), (WARNING, critical), (OK, warning)))
            if critical is not None:
                return cls(((CRITICAL, None), (OK, critical)))
            return cls(((WARNING, None), (OK, warning)))
        steps: list[tuple[str, Optional[float]]] = [(OK, None)]
        if warning is not None:
            steps.append((WARNING, warning))
        if critical is not None:
            steps.append((CRITICAL, critical))
        return cls(tuple(steps))


NO_BANDS = Bands(((OK, None),))


@dataclass(frozen=True)
class Panel:
    """What one panel shows; layout and JSON plumbing are derived from it."""

    title: str
    kind: str
    queries: tuple[Query, ...]
    unit: str
    description: str
    threshold: Optional[str] = None  # key in alerts/thresholds.yaml the bands come from
    width: int = 12
    height: int = 8
    bands: Bands = NO_BANDS
    mappings: tuple[tuple[str, str, str], ...] = ()  # (value, text, color)
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    stacked: bool = False  # timeseries: the series stacked (parts of one whole, e.g. average active sessions)

    def __post_init__(self) -> None:
        if self.kind not in PANEL_KINDS:
            raise ValueError(f"panel {self.title!r}: unknown kind {self.kind!r}")
        if not 0 < self.width <= GRID_COLUMNS:
            raise ValueError(f"panel {self.title!r}: width {self.width} outside 1..{GRID_COLUMNS}")


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[str, ...] = ("target",)
    tags: tuple[str, ...] = field(default=("pgvigil", "postgresql"))


# -- layout ------------------------------------------------------------------

def layout(panels: tuple[Panel, ...]) -> list[dict[str, int]]:
    """Left-to-right, top-to-bottom packing into 24 columns; a row is as tall as its tallest panel."""
    positions, x, y, row_height = [], 0, 0, 0
    for panel in panels:
        if x + panel.width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        positions.append({"h": panel.height, "w": panel.width, "x": x, "y": y})
        x += panel.width
        row_height = max(row_height, panel.height)
    return positions


# -- panels ------------------------------------------------------------------

def render_target(query: Query, ref_id: str, kind: str) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend,
        "refId": ref_id,
    }
    if kind == "table":
        target.update(format="table", instant=True, range=False)
    elif kind == "heatmap":
        target.update(format="heatmap", instant=False, range=True)
    else:
        target.update(format="time_series", instant=False, range=True)
    return target


def render_thresholds(bands: Bands) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in bands.steps]}


def render_mappings(mappings: tuple[tuple[str, str, str], ...]) -> list[dict[str, Any]]:
    if not mappings:
        return []
    options = {value: {"color": color, "index": i, "text": text} for i, (value, text, color) in enumerate(mappings)}
    return [{"options": options, "type": "value"}]


def field_defaults(panel: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "color": {"mode": "thresholds" if panel.kind in ("stat", "gauge", "bargauge") else "palette-classic"},
        "mappings": render_mappings(panel.mappings),
        "thresholds": render_thresholds(panel.bands),
        "unit": panel.unit,
    }
    if panel.minimum is not None:
        defaults["min"] = panel.minimum
    if panel.maximum is not None:
        defaults["max"] = panel.maximum
    if panel.kind == "timeseries":
        banded = len(panel.bands.steps) > 1
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 10,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "thresholdsStyle": {"mode": "line+area" if banded else "off"},
        }
        if panel.stacked:
            defaults["custom"].update({"fillOpacity": 60, "stacking": {"group": "A", "mode": "normal"}})
    if panel.kind == "table":
        defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False}
    return defaults


REDUCE_LAST = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def panel_options(panel: Panel) -> dict[str, Any]:
    """Per-kind display options; legends are always shown where the panel type has one."""
    if panel.kind == "timeseries":
        return {
            "legend": {"calcs": ["lastNotNull", "max"], "displayMode": "table", "placement": "bottom",
                       "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if panel.kind == "stat":
        return {
            "colorMode": "background",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": REDUCE_LAST,
            "showPercentChange": False,
            "textMode": "value_and_name",
            "wideLayout": True,
        }
    if panel.kind == "gauge":
        return {"orientation": "auto", "reduceOptions": REDUCE_LAST, "showThresholdLabels": False,
                "showThresholdMarkers": True}
    if panel.kind == "bargauge":
        return {"displayMode": "gradient", "minVizHeight": 16, "minVizWidth": 8, "namePlacement": "auto",
                "orientation": "horizontal", "reduceOptions": REDUCE_LAST, "showUnfilled": True,
                "sizing": "auto", "valueMode": "color"}
    if panel.kind == "table":
        return {"cellHeight": "sm", "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
                "showHeader": True, "sortBy": [{"desc": True, "displayName": "Value"}]}
    return {  # heatmap of a (gauge) histogram whose buckets Prometheus already counted
        "calculate": False,
        "cellGap": 1,
        "color": {"exponent": 0.5, "fill": "dark-orange", "mode": "scheme", "reverse": False,
                  "scale": "exponential", "scheme": "Oranges", "steps": 64},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": False},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": panel.unit},
    }


def table_transformations() -> list[dict[str, Any]]:
    """Instant tables: hide the timestamp and metric name columns, keep the labels and the value."""
    return [{"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True, "job": True,
                                                              "instance": True}}}]


def render_panel(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": field_defaults(panel), "overrides": []},
        "gridPos": grid,
        "id": panel_id,
        "options": panel_options(panel),
        "targets": [render_target(q, chr(ord("A") + i), panel.kind) for i, q in enumerate(panel.queries)],
        "title": panel.title,
        "type": panel.kind,
    }
    if panel.kind == "table":
        rendered["transformations"] = table_transformations()
    return rendered


# -- dashboard ---------------------------------------------------------------

def datasource_variable() -> dict[str, Any]:
    return {"current": {}, "hide": 0, "includeAll": False, "label": "Data source", "multi": False,
            "name": "datasource", "options": [], "query": "prometheus", "refresh": 1, "regex": "",
            "skipUrlSync": False, "type": "datasource"}


VARIABLE_QUERIES = {
    "target": ("Target", "label_values(pg_up, target)"),
    "datname": ("Database", 'label_values(pg_database_size_bytes{target=~"$target"}, datname)'),
    "pooler": ("PgBouncer", "label_values(pgbouncer_up, target)"),
}


def query_variable(name: str) -> dict[str, Any]:
    label, query = VARIABLE_QUERIES[name]
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": query,  # the classic string form: every Grafana version reads and migrates it
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def render_dashboard(spec: Dashboard) -> dict[str, Any]:
    panels = [render_panel(p, i + 1, grid) for i, (p, grid) in enumerate(zip(spec.panels, layout(spec.panels)))]
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "description": spec.description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": True, "icon": "external link", "includeVars": True, "keepTime": True,
                   "tags": ["pgvigil"], "targetBlank": False, "title": "pgvigil dashboards", "type": "dashboards"}],
        "liveNow": False,
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": list(spec.tags),
        "templating": {"list": [datasource_variable(), *(query_variable(v) for v in spec.variables)]},
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": spec.title,
        "uid": spec.uid,
        "version": 1,
        "weekStart": "",
    }
