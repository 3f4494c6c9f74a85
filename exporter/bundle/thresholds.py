"""The thresholds file: every number behind the alert rules, their tests and the dashboard bands.

`load_thresholds()` reads the shipped `default_thresholds.yaml` (package data, so a plain
`pip install .` finds it; `alerts/thresholds.yaml` in a clone is a symlink to it, one source) or a
user's own file, validates it and returns frozen `Threshold` records keyed by name. Every
validation error names the file, the line and the key, and all of them are reported at once.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from exporter.config import ConfigError
from exporter.schema import EntriesChecker, Key, Section, did_you_mean, parse_entries, read_entries_file
from exporter.yamlsource import LocatedData, shown

DEFAULT_THRESHOLDS = Path(__file__).with_name("default_thresholds.yaml")

UNITS = ("ratio", "seconds", "bytes", "count", "boolean")
DIRECTIONS = ("above", "below")
THRESHOLD_KEYS = Section(
    "<threshold name>",
    Key("warning", required=True, doc="warning level, or null where the alert has no warning"),
    Key("critical", required=True, doc="critical level, or null (both null: the alert is off, opt-in)"),
    Key("for", required=True, doc="Prometheus duration the condition must hold, e.g. 5m"),
    Key("unit", required=True, doc=", ".join(UNITS)),
    Key("direction", default="above", doc="above or below: which side of the level alerts"),
    Key("min_rate", doc="traffic floor below which the alert stays quiet"),
    Key("min_bytes", doc="size floor: an object wasting fewer bytes than this is not judged (bloat ratios)"),
    Key("description", required=True, doc="what is measured and where the number comes from"),
)
# Prometheus' own grammar (model.ParseDuration): units from the largest to the smallest, each at most
# once; the total must fit Go's time.Duration (int64 nanoseconds, about 292 years) or promtool fails.
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_DURATION_PARTS = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
_UNIT_MILLISECONDS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
MAX_DURATION_NANOSECONDS = 2**63 - 1


def duration_problem(value: Any, example: str = "5m or 1h30m") -> str | None:
    """Why `value` is not a duration Prometheus accepts (None when it is one)."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) and value else None
    if value == "0":
        return None
    if match is None and isinstance(value, str) and _DURATION_PARTS.fullmatch(value):
        return ("units go from the largest to the smallest, each at most once (y, w, d, h, m, s, ms), "
                f"got {shown(value)}")
    if match is None:
        return f"expected a Prometheus duration such as {example}, got {shown(value)}"
    milliseconds = sum(int(amount) * unit for amount, unit in zip(match.groups(), _UNIT_MILLISECONDS) if amount)
    if milliseconds * 1_000_000 > MAX_DURATION_NANOSECONDS:
        return f"{shown(value)} is longer than Prometheus can represent (about 292 years)"
    return None


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
    min_bytes: float | None = None

    def levels(self) -> dict[str, float]:
        """The severities this threshold defines, mapped to their level."""
        pairs = (("warning", self.warning), ("critical", self.critical))
        return {severity: level for severity, level in pairs if level is not None}

    def breaches(self, value: float, level: float) -> bool:
        """Whether `value` is on the alerting side of `level` (strictly)."""
        return value < level if self.direction == "below" else value > level


def load_thresholds(path: str | Path | None = None, required: Collection[str] = ()) -> dict[str, Threshold]:
    """Read and validate a thresholds file (the shipped defaults when `path` is None); `required` names the
    entries it must have (the alerts' thresholds), each absent one an error reported with the others."""
    path = Path(path) if path is not None else DEFAULT_THRESHOLDS
    return parse_thresholds(read_entries_file(path, "thresholds", ThresholdError), str(path), required)


def parse_thresholds(text: str, source: str = "<string>", required: Collection[str] = ()) -> dict[str, Threshold]:
    """Validate thresholds YAML text; `source` names it in error messages."""
    return parse_entries(text, source, lambda located: _Checker(located, required),
                         "threshold names to {warning, critical, for, unit, description}", ThresholdError)


class _Checker(EntriesChecker[Threshold]):
    """Threshold entries; the messages keep the wording `pgvigil bundle` has always printed."""

    def __init__(self, located: LocatedData, required: Collection[str] = ()) -> None:
        super().__init__(located)
        self.required = required

    def complete(self, names: list[str]) -> None:
        # A file kept from an older pgvigil lacks the entries of the alerts added since: say which, in the same
        # run as its other errors, and where an unknown name is close to one, that it may be a typo of it.
        unknown = [name for name in names if name not in self.required]
        for name in sorted(set(self.required) - set(names)):
            hint = did_you_mean(name, unknown)
            # no line: the entry is nowhere in the file (error() would name the line of the mapping)
            self.errors.append(f"{self.doc.source}: {name}: missing: every alert needs its entry" + (
                f" (is {hint} a typo of it?)" if hint else "; copy it from the shipped thresholds "
                                                            "(alerts/thresholds.yaml)"))

    def unknown_key(self, key: Any, allowed: tuple[str, ...]) -> str:
        hint = did_you_mean(str(key), allowed)
        return f"unknown key{f' (did you mean {shown(hint)}?)' if hint else ''}; allowed: {', '.join(allowed)}"

    def missing_key(self, name: str) -> str:
        return f"missing key '{name}'"

    def entry(self, name: str, entry: Any) -> Threshold | None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            self.error((name,), "threshold names are lower_snake_case")
        if not isinstance(entry, dict):
            self.error((name,), "expected a mapping with warning, critical, for, unit, description")
            return None
        before = len(self.errors)
        self.mapping(entry, (name,), THRESHOLD_KEYS)
        self.missing(entry, (name,), THRESHOLD_KEYS)
        warning, critical, min_rate, min_bytes = (self.number(entry.get(key), (name, key))
                                                  for key in ("warning", "critical", "min_rate", "min_bytes"))
        duration = entry.get("for")
        problem = duration_problem(duration) if "for" in entry else None
        if problem:
            self.error((name, "for"), problem)
        unit = entry.get("unit")
        if "unit" in entry and unit not in UNITS:
            self.error((name, "unit"), f"expected one of {', '.join(UNITS)}, got {shown(unit)}")
        direction = entry.get("direction", THRESHOLD_KEYS["direction"].default)
        if direction not in DIRECTIONS:
            self.error((name, "direction"), f"expected above or below, got {shown(direction)}")
        description = entry.get("description")
        if "description" in entry and not (isinstance(description, str) and description.strip()):
            self.error((name, "description"), "expected a sentence naming what is measured and its source")
        if warning is not None and critical is not None:
            self.levels_in_order(name, warning, critical, direction)
        if len(self.errors) != before:
            return None
        return Threshold(
            name=name, warning=warning, critical=critical, for_=str(duration), unit=str(unit),
            description=str(description).strip(), direction=direction, min_rate=min_rate,
            min_bytes=min_bytes,
        )

    def levels_in_order(self, name: str, warning: float, critical: float, direction: str) -> None:
        if direction == "above" and warning > critical:
            self.error((name, "critical"), f"must be >= warning ({warning:g}) when direction is above")
        if direction == "below" and warning < critical:
            self.error((name, "critical"), f"must be <= warning ({warning:g}) when direction is below")

    def number(self, value: Any, path: tuple) -> float | None:
        """A level or rate: a finite number, or null where the alert lacks it."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.error(path, f"expected a number or null, got {shown(value)}")
            return None
        return value
