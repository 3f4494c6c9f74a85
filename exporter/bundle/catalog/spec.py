"""What an alert is made of (`AlertSpec`), and the pieces its promtool scenarios are built from.

A scenario is a function of a `Case` (the value to produce, how many minutes of data, ...) that
returns the promtool input series and the alert they should raise. The area modules next to this
one declare their alerts with these; the generic builders below cover the alerts whose value is
one series as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

RUNBOOK_BASE = "https://github.com/pgvigil/pgvigil/blob/main/docs/runbooks.md"
EXPORTER_JOB = "pgvigil"  # the Prometheus job that scrapes pgvigil; PostgresExporterDown watches it

# Labels every series of the test scenarios carries: Prometheus' job/instance, pgvigil's target
# label and a target constant label, so the tests prove the rules keep what they should.
BASE = {"job": EXPORTER_JOB, "instance": "pgvigil:9187", "target": "primary", "cluster": "main"}
APP_TABLE = {"datname": "app", "schemaname": "public", "relname": "orders"}
APP_DATABASE = {"datid": "16384", "datname": "app"}


@dataclass(frozen=True)
class Case:
    """What one generated test asks of a scenario."""

    value: float  # the alert value the series must produce
    minutes: int  # how many minutes of samples to write
    eval_at: int = 0  # the minute promtool evaluates the alert
    quiet: bool = False  # the ratio is bad, but on less traffic than the threshold's min_rate
    min_rate: float = 0.0  # the threshold's traffic floor (ratio alerts)
    min_bytes: float = 0.0  # the threshold's size floor (bloat ratios)


@dataclass(frozen=True)
class Scenario:
    """promtool input series (selector -> values notation) and the alert value they produce."""

    series: dict[str, str]
    value: float | None  # None: the description shows no value
    labels: dict[str, str]  # labels of the resulting alert, besides alertname and severity


ScenarioBuilder = Callable[[Case], Scenario]


class ValueKind(str, Enum):
    """How the alert value comes about, which decides where the generated tests place it."""

    GAUGE = "gauge"  # a value as scraped: exact at any minute
    RATE = "rate"  # computed from counters over a window: exact once the window is full
    CLOCK = "clock"  # an age computed with time(): grows a minute per minute


@dataclass(frozen=True)
class AlertSpec:
    """One alert. The levels are not here: `threshold` names the thresholds file entry, and the
    generator emits one rule per severity that entry defines."""

    name: str
    threshold: str
    group: str
    value_expr: str  # compared with the level: `<value_expr> > level` (or `<` when direction is below)
    summary: str
    description: str  # str.format template: {value}, {level}, or any label of the alert
    scenario: ScenarioBuilder
    guard: str = ""  # appended after the comparison: `and ...` / `unless ...`; may use {min_rate}
    kind: ValueKind = ValueKind.GAUGE
    window: int = 0  # minutes of range data the value needs before it is exact
    starts_at: int = 0  # minute from which the scenario's condition can be true
    has_quiet_case: bool = False  # scenario(quiet=True) breaches the level under min_rate traffic (or min_bytes)
    whole_value: bool = False  # an extrapolated count from increase(): shown rounded, not humanized

    @property
    def anchor(self) -> str:
        return self.name.lower()

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_BASE}#{self.anchor}"


def selector(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return f"{name}{{{inner}}}"


def constant(value: float, minutes: int) -> str:
    return f"{number(value)}+0x{minutes}"


def session_series(datname: str, state: str, count: float, minutes: int) -> dict[str, str]:
    """`count` sessions of one database and state, as pg_stat_activity_count splits them (postgres_exporter
    0.20's labels): by user, application and wait event, so the rules must sum them back."""
    web = count - count // 2
    labels = {**BASE, "datname": datname, "state": state, "backend_type": "client backend"}
    return {
        selector("pg_stat_activity_count", {**labels, "usename": "app", "application_name": "web",
                                            "wait_event_type": "Client", "wait_event": "ClientRead"}):
            constant(web, minutes),
        selector("pg_stat_activity_count", {**labels, "usename": "batch", "application_name": "worker",
                                            "wait_event_type": "", "wait_event": ""}):
            constant(count - web, minutes),
    }


def counter(per_minute: float, minutes: int) -> str:
    return f"0+{number(per_minute)}x{minutes}"


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def gauge(metric: str, extra: dict[str, str] | None = None) -> ScenarioBuilder:
    """A scenario where one gauge series carries the value itself."""
    labels = {**BASE, **(extra or {})}

    def build(case: Case) -> Scenario:
        return Scenario({selector(metric, labels): constant(case.value, case.minutes)}, case.value, labels)

    return build


def flag(metric: str, extra: dict[str, str] | None = None) -> ScenarioBuilder:
    """A 0/1 gauge (or a state) whose description carries no value."""
    as_gauge = gauge(metric, extra)

    def build(case: Case) -> Scenario:
        scenario = as_gauge(case)
        return Scenario(scenario.series, None, scenario.labels)

    return build


def increase(metric: str, extra: dict[str, str], window: int,
             alert_labels: dict[str, str] | None = None) -> ScenarioBuilder:
    """A counter growing steadily so that its increase over `window` minutes is the value."""
    labels = {**BASE, **extra}

    def build(case: Case) -> Scenario:
        series = {selector(metric, labels): counter(case.value / window, case.minutes)}
        return Scenario(series, case.value, dict(alert_labels or labels))

    return build
