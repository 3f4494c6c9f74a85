"""Threshold profiles: the one thresholds file with a declared override, never a second copy.

A profile (`profiles/<name>.yaml`, package data) says what differs from the thresholds file for a
setting other than production, and nothing else:

    description: why the profile exists
    for_at_most: 10s               # every threshold's `for` is capped at this
    thresholds:                    # per threshold, the levels or wait that replace the file's
      idle_in_transaction: {warning: 20, critical: 45}

`pgvigil demo` generates its rules with the `demo` profile, so its first alerts fire within a
minute; `pgvigil bundle --profile demo --out DIR` writes the same rules for anyone to read.
Changing a number in the thresholds file moves every profile with it.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.bundle.thresholds import Threshold, ThresholdError, duration_problem
from exporter.files import CONFIG_LIMIT, UnreadableFile, read_text
from exporter.schema import Checker, Key, Section, did_you_mean
from exporter.yamlsource import YamlSyntaxError, load_located

PROFILES_DIR = Path(__file__).with_name("profiles")
PROFILE_KEYS = Section(
    "<profile>",
    Key("description", kind="text", required=True, doc="why the profile exists"),
    Key("for_at_most", doc="Prometheus duration every threshold's `for` is capped at"),
    Key("thresholds", doc="threshold name -> {warning, critical, for} replacing the thresholds file's"),
)
OVERRIDE_KEYS = Section(
    "<threshold name>",
    Key("warning", doc="level, or null"),
    Key("critical", doc="level, or null"),
    Key("for", doc="Prometheus duration"),
)
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class ProfileError(ThresholdError):
    """An invalid profile; `.errors` lists every problem as `file:line: key: message`."""


@dataclass(frozen=True)
class Profile:
    """A declared override of the thresholds file."""

    name: str
    description: str
    for_at_most: str | None
    overrides: dict[str, dict[str, Any]]
    source: str
    lines: dict[str, int] = dataclasses.field(default_factory=dict)  # override name -> its line

    def where(self, name: str) -> str:
        """`file:line: thresholds.<name>` for an error about one override."""
        line = self.lines.get(name)
        return f"{self.source}{f':{line}' if line else ''}: thresholds.{name}"


def profile_names() -> tuple[str, ...]:
    """The profiles shipped with pgvigil."""
    return tuple(sorted(path.stem for path in PROFILES_DIR.glob("*.yaml")))


def load_profile(name: str) -> Profile:
    """The shipped profile `name`, validated (unknown names get a did-you-mean)."""
    path = PROFILES_DIR / f"{name}.yaml"
    if name not in profile_names():
        hint = did_you_mean(name, profile_names())
        suggestion = f"did you mean {hint!r}?" if hint else f"expected one of: {', '.join(profile_names())}"
        raise ProfileError([f"unknown profile {name!r}; {suggestion}"])
    try:
        text = read_text(path, CONFIG_LIMIT, "profile")
    except UnreadableFile as exc:
        raise ProfileError([str(exc)]) from None
    return parse_profile(text, name, f"exporter/bundle/profiles/{path.name}")


def parse_profile(text: str, name: str, source: str = "<string>") -> Profile:
    """Validate profile YAML text; `source` names it in error messages."""
    try:
        located = load_located(text, source)
    except YamlSyntaxError as exc:
        raise ProfileError([str(exc)]) from None
    checker = Checker(located)
    data = checker.mapping(located.data, (), PROFILE_KEYS)
    checker.missing(data, (), PROFILE_KEYS)
    values = checker.scalars(data, (), PROFILE_KEYS)
    cap = data.get("for_at_most")
    if cap is not None:
        _check_duration(checker, cap, ("for_at_most",))
    overrides = {}
    for threshold, entry in checker.mapping(data.get("thresholds"), ("thresholds",), None).items():
        path = ("thresholds", threshold)
        override = checker.mapping(entry, path, OVERRIDE_KEYS)
        for key in ("warning", "critical"):
            if override.get(key) is not None:
                checker.typed(override[key], path + (key,), "number")
        if "for" in override:
            _check_duration(checker, override["for"], path + ("for",))
        overrides[str(threshold)] = dict(override)
    if checker.errors:
        raise ProfileError(checker.errors)
    lines = {threshold: located.line_of(("thresholds", threshold)) or 0 for threshold in overrides}
    return Profile(name, values.get("description", ""), cap, overrides, source, lines)


def _check_duration(checker: Checker, value: Any, path: tuple) -> None:
    problem = duration_problem(value, example="10s or 1m")
    if problem:
        checker.error(path, problem)


def duration_seconds(duration: str) -> float:
    """A Prometheus duration (`1h30m`, `10s`, `0`) in seconds."""
    return sum(int(amount) * _SECONDS[unit] for amount, unit in _DURATION_PART.findall(duration))


def apply_profile(thresholds: dict[str, Threshold], profile: Profile) -> dict[str, Threshold]:
    """The thresholds as the profile changes them. An override naming no threshold of the file, or
    leaving the levels out of order, is an error naming the profile."""
    errors = [f"{profile.where(name)}: no such threshold in the thresholds file"
              + (f" (did you mean {hint!r}?)" if (hint := did_you_mean(name, thresholds)) else "")
              for name in profile.overrides if name not in thresholds]
    changed = {}
    for name, threshold in thresholds.items():
        override = profile.overrides.get(name, {})
        updated = dataclasses.replace(
            threshold,
            warning=override.get("warning", threshold.warning),
            critical=override.get("critical", threshold.critical),
            for_=_capped(override.get("for", threshold.for_), profile.for_at_most),
        )
        errors.extend(f"{profile.where(name)}: {message}" for message in _order_errors(updated))
        changed[name] = updated
    if errors:
        raise ProfileError(errors)
    return changed


def _capped(duration: str, cap: str | None) -> str:
    if cap is None or duration_seconds(duration) <= duration_seconds(cap):
        return duration
    return cap


def _order_errors(threshold: Threshold) -> list[str]:
    """What the thresholds file's own checks would say about the overridden levels."""
    levels = threshold.levels()
    if not levels:
        return []  # both null: the alert is off, as in the thresholds file
    if len(levels) < 2:
        return []
    warning, critical = levels["warning"], levels["critical"]
    if threshold.breaches(warning, critical):  # the warning would sit beyond the critical level
        return [f"warning {warning:g} and critical {critical:g} are out of order (direction {threshold.direction})"]
    return []
