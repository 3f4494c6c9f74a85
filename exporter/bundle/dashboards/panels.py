"""What the dashboard modules share: label filters, legends, colors, and panels banded by the thresholds."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from exporter.bundle.grafana import Bands, Panel, Query

T = 'target=~"$target"'
TD = 'target=~"$target", datname=~"$datname"'
TABLE_LEGEND = "{{datname}}.{{schemaname}}.{{relname}}"
INDEX_LEGEND = "{{datname}}.{{schemaname}}.{{indexrelname}}"
UP_MAPPINGS = (("0", "Down", "red"), ("1", "Up", "green"))
ANY_IS_BAD = Bands((("green", None), ("red", 1.0)))
ANY_IS_NOTABLE = Bands((("green", None), ("orange", 1.0)))

# `PanelBuilder.panel`: (title, kind, queries, unit, description, threshold=None, **layout) -> Panel
PanelFn = Callable[..., Panel]


def levels(thresholds: Mapping[str, Any], key: str) -> tuple[float | None, float | None, str]:
    """(warning, critical, direction) of one threshold; `Threshold` records or plain mappings."""
    if key not in thresholds:
        raise KeyError(f"the thresholds file has no {key!r} threshold, which the dashboards use")
    entry = thresholds[key]
    if isinstance(entry, Mapping):
        return entry.get("warning"), entry.get("critical"), entry.get("direction", "above")
    return entry.warning, entry.critical, entry.direction


class PanelBuilder:
    """Builds panels whose bands come from the thresholds file, so dashboards and alerts agree."""

    def __init__(self, thresholds: Mapping[str, Any]) -> None:
        self.thresholds = thresholds

    def panel(self, title: str, kind: str, queries: list[Query], unit: str, description: str,
              threshold: str | None = None, **layout: Any) -> Panel:
        if threshold is not None:
            layout["bands"] = Bands.from_levels(*levels(self.thresholds, threshold))
        return Panel(title, kind, tuple(queries), unit, description, threshold, **layout)

    def critical(self, key: str) -> float:
        level = levels(self.thresholds, key)[1]
        if level is None:
            raise KeyError(f"threshold {key!r} has no critical level, which the dashboards use")
        return level
