"""The objectives file: service level objectives as error budgets over a period.

`load_objectives()` reads the shipped `default_objectives.yaml` (package data; `alerts/objectives.yaml`
in a clone is a symlink to it) or a user's own file, validates it with the shared located-error
`Checker` and returns frozen `Objective` records keyed by name. `slos_rules` turns them into
recording rules and burn-rate alerts, `slos_tests` into promtool tests.

Every objective is judged over the burn windows of the Google SRE workbook (5m, 30m, 1h, 2h, 6h, 1d
and 3d for a 30-day period). A shorter or longer period scales the windows with it, so a burn factor
always means the same share of the budget spent: 14.4 over 1h is 2 % of a 30-day budget.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.config import ConfigError
from exporter.schema import EntriesChecker, Key, Section, parse_duration, parse_entries, read_entries_file
from exporter.serverlog.counters import DURATION_BUCKETS
from exporter.yamlsource import describe_value, shown

DEFAULT_OBJECTIVES = Path(__file__).with_name("default_objectives.yaml")
REFERENCE_PERIOD = 30 * 86400  # the period the workbook's windows and factors are written for
# The standard windows, in seconds of a 30-day period.
STANDARD_WINDOWS = (300, 1800, 3600, 7200, 21600, 86400, 259200)
# Smallest period whose shortest window (5m of 30d) is still a whole second.
MIN_PERIOD = REFERENCE_PERIOD / STANDARD_WINDOWS[0]

_COMMON = (
    Key("kind", required=True, doc="availability, latency, cache_hit, rpo or rto: what is measured"),
    Key("objective", "number", required=True, doc="share of good events (or minutes), e.g. 0.999"),
    Key("period", "duration", default="30d", doc="the period the error budget covers (default 30d)"),
    Key("description", "text", required=True, doc="what is promised and where the number comes from"),
)
KIND_KEYS: dict[str, Section] = {
    "availability": Section("availability objective", *_COMMON),
    "latency": Section(
        "latency objective", *_COMMON,
        Key("bound", "duration", required=True, doc="a query is good when it takes at most this long"),
        Key("source", default="statements", doc="statements (pg_stat_statements), application (a histogram) or log "
                                                "(each slow execution from the server log, docs/logs.md)"),
        Key("metric", doc="source application: the histogram's name, without _bucket"),
        Key("metric_labels", doc="source application: the histogram's own labels, summed away"),
    ),
    "cache_hit": Section("cache hit objective", *_COMMON),
    "rpo": Section(
        "rpo objective", *_COMMON,
        Key("bound", "duration", required=True, doc="the oldest the last archived WAL segment may be"),
        Key("backup_age", "duration", required=True, doc="the oldest the newest verified backup may be"),
    ),
    "rto": Section(
        "rto objective", *_COMMON,
        Key("bound", "duration", required=True, doc="the longest `pgvigil backup verify --restore` may take"),
    ),
}
SOURCES: tuple[str, ...] = ("statements", "application")
SOURCES += ("log",)  # pg_log_statement_duration_seconds over pg_stat_statements calls (exporter/serverlog)
# What `slos_rules` pastes into PromQL is validated here, so no value can change an expression's meaning:
# label names (`without(...)`), metric names, objective names (the `slo` label's value) and durations.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
OBJECTIVE_NAME = re.compile(r"[a-z][a-z0-9_]*")
FASTEST_BURN = 14.4  # the fast page's burn factor (slos_rules.PAGE), as a share of the budget per hour


class ObjectiveError(ConfigError):
    """An invalid objectives file; `.errors` lists every problem as `file:line: key: message`."""


@dataclass(frozen=True)
class Objective:
    """One service level objective. `bound`, `backup_age` and `period` are seconds."""

    name: str
    kind: str
    objective: float
    period: float
    description: str
    bound: float | None = None
    backup_age: float | None = None
    source: str = "statements"
    metric: str | None = None
    metric_labels: tuple[str, ...] = ()

    @property
    def budget(self) -> float:
        """The error budget: the share of events (or minutes) allowed to be bad."""
        return round(1 - self.objective, 12)

    @property
    def alert_name(self) -> str:
        return "Postgres" + "".join(part.capitalize() for part in self.name.split("_")) + "BudgetBurn"

    def windows(self) -> dict[int, str]:
        """Standard window (seconds of a 30-day period) -> this objective's window as a PromQL duration."""
        scale = self.period / REFERENCE_PERIOD
        return {standard: promql_duration(standard * scale) for standard in STANDARD_WINDOWS}


def promql_duration(seconds: float) -> str:
    """Seconds as one PromQL duration in the largest unit that divides them (rounded to a millisecond)."""
    millis = int(round(seconds * 1000))
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def load_objectives(path: str | Path | None = None) -> dict[str, Objective]:
    """Read and validate an objectives file (the shipped defaults when `path` is None)."""
    path = Path(path) if path is not None else DEFAULT_OBJECTIVES
    return parse_objectives(read_entries_file(path, "objectives", ObjectiveError), str(path))


def parse_objectives(text: str, source: str = "<string>") -> dict[str, Objective]:
    """Validate objectives YAML text; `source` names it in error messages. Every error is reported."""
    return parse_entries(text, source, _ObjectiveChecker,
                         "objective names to {kind, objective, description, ...}", ObjectiveError)


class _ObjectiveChecker(EntriesChecker[Objective]):
    def entry(self, name: str, entry: Any) -> Objective | None:
        before = len(self.errors)
        if not OBJECTIVE_NAME.fullmatch(name):
            self.error((name,), "objective names are lower_snake_case (they name the alert and the recording rules)")
        if not isinstance(entry, dict):
            self.error((name,), f"expected a mapping with kind, objective and description, got {describe_value(entry)}")
            return None
        kind = self.choice(entry.get("kind"), (name, "kind"), KIND_KEYS) if "kind" in entry else None
        # Without a valid kind the allowed keys are unknown: check only what every kind has.
        section = KIND_KEYS[kind] if kind else Section("objective", *_COMMON)
        self.mapping(entry, (name,), section if kind else None)
        self.missing(entry, (name,), section)
        values = self.scalars(entry, (name,), section)
        self._check_objective(name, values.get("objective"))
        period: float = values.get("period") or parse_duration(section["period"].default) or REFERENCE_PERIOD
        if "period" in values and period < MIN_PERIOD:
            self.error((name, "period"), "must be at least 2h24m: its shortest burn window (5m of 30d) "
                                         "would be under a second")
        for key in ("bound", "backup_age"):
            if key in values and round(values[key], 12) <= 0:  # PromQL reads it to 12 decimals (slos_rules.number)
                self.error((name, key), "must be above zero: with a bound of 0 every event is bad and the objective "
                                        "is a constant")
        if kind == "latency":
            self._check_source(name, entry)
        if kind is None or len(self.errors) != before:
            return None
        return Objective(
            name=name, kind=kind, objective=float(values["objective"]), period=float(period),
            description=values["description"].strip(), bound=values.get("bound"),
            backup_age=values.get("backup_age"), source=entry.get("source", "statements"),
            metric=entry.get("metric"), metric_labels=tuple(entry.get("metric_labels") or ()),
        )

    def _check_objective(self, name: str, value: float | None) -> None:
        if value is not None and not (0 < value < 1):
            self.error((name, "objective"), f"must be between 0 and 1 (a share such as 0.999), got {value!r}")
        elif value is not None and (1 - value) * FASTEST_BURN >= 1:
            # the fast page needs an error ratio of 14.4 budgets over an hour: more than all events
            self.error((name, "objective"), f"must be above {1 - 1 / FASTEST_BURN:.4f}: with a budget of "
                                            f"{(1 - value) * 100:g} % even a total failure cannot burn it "
                                            f"{FASTEST_BURN:g} times too fast, so the fast burn could never page")

    def _check_source(self, name: str, entry: dict) -> None:
        source = entry.get("source", "statements")
        if self.choice(source, (name, "source"), SOURCES) is None:
            return
        if source == "application":
            metric = entry.get("metric")
            if not (isinstance(metric, str) and METRIC_NAME.fullmatch(metric)):
                self.error((name, "metric") if "metric" in entry else (name,),
                           "source application needs metric: the name of a histogram, without _bucket")
            if "metric_labels" in entry:
                self._check_metric_labels(name, entry["metric_labels"])
        else:
            for key in ("metric", "metric_labels"):
                if key in entry:
                    self.error((name, key), "only for source application")
        if source == "log":
            bound = parse_duration(entry.get("bound"))
            if bound is not None and bound not in DURATION_BUCKETS:
                self.error((name, "bound"), "source log reads pg_log_statement_duration_seconds at the bound: "
                                            "expected one of its buckets, "
                                            + ", ".join(f"{b:g}s" for b in DURATION_BUCKETS))

    def _check_metric_labels(self, name: str, value: Any) -> None:
        """The histogram's own labels, summed away in `without(...)`: each a Prometheus label name, once."""
        path = (name, "metric_labels")
        labels = self.string_list(value, path)
        for i, label in enumerate(labels):
            if not LABEL_NAME.fullmatch(label) or label.startswith("__"):
                self.error(path + (i,), "expected a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting "
                                        f"with __), got {describe_value(label)}")
            elif label == "le":
                self.error(path + (i,), "'le' is the histogram's bucket label: the bucket at the bound is read "
                                        "by it, never summed away")
            elif label in labels[:i]:
                self.error(path + (i,), f"label {shown(label)} is listed twice")
