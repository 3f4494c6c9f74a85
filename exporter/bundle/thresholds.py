"""The thresholds file: every number behind the alert rules, their tests and the dashboard bands.

`load_thresholds()` reads `alerts/thresholds.yaml` (a copy ships inside the package as
`default_thresholds.yaml`, so pip installs work) or a user's own file, validates it and returns
frozen `Threshold` records keyed by name. Every validation error names the file, the line and the
key, and all of them are reported at once.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.config import ConfigError
from exporter.yamlsource import LocatedErrors, YamlSyntaxError, load_located

DEFAULT_THRESHOLDS = Path(__file__).with_name("default_thresholds.yaml")

UNITS = ("ratio", "seconds", "bytes", "count", "boolean")
DIRECTIONS = ("above", "below")
_KEYS = ("warning", "critical", "for", "unit", "direction", "min_rate", "description")
_DURATION = re.compile(r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$")


class ThresholdError(ConfigError):
    """An invalid thresholds file; `.errors` lists every problem as `file:line: key: message`."""


@dataclass(frozen=True)
class Threshold:
    """One alert threshold. `warning`/`critical` are None where the alert lacks that severity."""

    name: str
    warning: float | None
    critical: float | None
    for_: str
    unit: str
    description: str
    direction: str = "above"
    min_rate: float | None = None

    def levels(self) -> dict[str, float]:
        """The severities this threshold defines, mapped to their level."""
        pairs = (("warning", self.warning), ("critical", self.critical))
        return {severity: level for severity, level in pairs if level is not None}

    def breaches(self, value: float, level: float) -> bool:
        """Whether `value` is on the alerting side of `level` (strictly)."""
        return value < level if self.direction == "below" else value > level


def load_thresholds(path: str | Path | None = None) -> dict[str, Threshold]:
    """Read and validate a thresholds file (the shipped defaults when `path` is None)."""
    path = Path(path) if path is not None else DEFAULT_THRESHOLDS
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ThresholdError([f"{path}: cannot read thresholds file: {exc.strerror}"]) from None
    return parse_thresholds(text, str(path))


def parse_thresholds(text: str, source: str = "<string>") -> dict[str, Threshold]:
    """Validate thresholds YAML text; `source` names it in error messages."""
    try:
        located = load_located(text, source)
    except YamlSyntaxError as exc:
        raise ThresholdError([str(exc)]) from None
    errors = LocatedErrors(located)
    data = located.data
    if not isinstance(data, dict) or not data:
        errors.add((), "expected a mapping of threshold names to {warning, critical, for, unit, description}")
        raise ThresholdError(errors.messages)
    thresholds = {}
    for name, entry in data.items():
        threshold = _parse_entry(str(name), entry, errors)
        if threshold is not None:
            thresholds[threshold.name] = threshold
    if errors.messages:
        raise ThresholdError(errors.messages)
    return thresholds


def _parse_entry(name: str, entry: Any, errors: LocatedErrors) -> Threshold | None:
    error = errors.add
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        error((name,), "threshold names are lower_snake_case")
    if not isinstance(entry, dict):
        error((name,), "expected a mapping with warning, critical, for, unit, description")
        return None
    before = len(errors.messages)
    for key in entry:
        if key not in _KEYS:
            close = [k for k in _KEYS if _similar(str(key), k)]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            error((name, key), f"unknown key{hint}; allowed: {', '.join(_KEYS)}")
    for key in ("warning", "critical", "for", "unit", "description"):
        if key not in entry:
            error((name,), f"missing key '{key}'")
    warning = _number(entry.get("warning"), (name, "warning"), error, allow_none=True)
    critical = _number(entry.get("critical"), (name, "critical"), error, allow_none=True)
    min_rate = _number(entry.get("min_rate"), (name, "min_rate"), error, allow_none=True)
    if "warning" in entry and "critical" in entry and warning is None and critical is None:
        error((name,), "at least one of warning and critical must be a number")
    duration = entry.get("for")
    if "for" in entry and not (isinstance(duration, str) and _DURATION.match(duration)):
        error((name, "for"), f"expected a Prometheus duration such as 5m or 1h30m, got {duration!r}")
    unit = entry.get("unit")
    if "unit" in entry and unit not in UNITS:
        error((name, "unit"), f"expected one of {', '.join(UNITS)}, got {unit!r}")
    direction = entry.get("direction", "above")
    if direction not in DIRECTIONS:
        error((name, "direction"), f"expected above or below, got {direction!r}")
    description = entry.get("description")
    if "description" in entry and not (isinstance(description, str) and description.strip()):
        error((name, "description"), "expected a sentence naming what is measured and its source")
    if warning is not None and critical is not None and direction in DIRECTIONS:
        if direction == "above" and warning > critical:
            error((name, "critical"), f"must be >= warning ({warning:g}) when direction is above")
        if direction == "below" and warning < critical:
            error((name, "critical"), f"must be <= warning ({warning:g}) when direction is below")
    if len(errors.messages) != before:
        return None
    return Threshold(
        name=name, warning=warning, critical=critical, for_=duration, unit=unit,
        description=description.strip(), direction=direction, min_rate=min_rate,
    )


def _number(value: Any, path: tuple, error, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        error(path, f"expected a number{' or null' if allow_none else ''}, got {value!r}")
        return None
    return value


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.6
