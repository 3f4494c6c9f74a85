"""promtool unit tests of the objectives' burn-rate alerts, generated from the same objectives file.

Four scenarios per objective, each a timeline of "bad fractions" (the share of bad events, or for
availability, rpo and rto whether a sample is bad) turned into the input series of the objective's
kind:

  healthy     half the budget's error rate all along: no page, no ticket
  fast burn   two healthy hours, then everything fails: pages within the workbook's time
              (2 % of the budget: 14.4 x budget x 1h of full failure), checked at that minute
  slow burn   4.5 x the budget's rate all along: the ticket opens once the long windows hold 90 minutes of
              data (slos_rules.MIN_HISTORY: none at 60 minutes on a fresh Prometheus), the page never does
  blip        two error-free hours, then full failure for 60 % of what would page: a threshold
              alert fires on it, the objective does not page

Which alerts are firing at each checked minute is computed by a model of the rules (window
averages over the samples, as Prometheus computes them) that must be decisive: every ratio at least
5 % away from its alert level. The model picks the minutes; promtool proves Prometheus agrees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

from exporter.bundle.catalog import BASE, number, selector
from exporter.bundle.rules import BundleError
from exporter.bundle.slos import REFERENCE_PERIOD, Objective, promql_duration
from exporter.bundle.slos_rules import (
    GUARDED_FROM,
    MIN_HISTORY,
    PAGE,
    SEVERITIES,
    Burn,
    description,
    runbook_url,
    slo_selector,
    summary,
)

RULE_FILE = "../pgvigil-slos.yml"
# Minutes (of a 30-day period). Two hours of history before trouble keep the 6-hour window's ratio
# of a blip well under its level (a blip is 8.6 budgets-minutes, the level 6 budgets over 91+ minutes);
# promtool's time grows with the square of the length, so no longer than needed.
HEALTHY_PREFIX = 120
LENGTH = 200
MARGIN = 0.05
FAST_FACTOR = PAGE[1][0].factor  # 14.4: the fast page's share of the budget per long window


@dataclass(frozen=True)
class Signal:
    """How a kind's bad fractions become input series, and how its rules average them."""

    interval: float  # seconds between samples, for a 30-day period
    binary: bool  # each sample is good or bad (a fraction becomes evenly spaced bad samples)
    averaging: str  # "samples": avg_over_time of the input; "increments": rate() of counters;
    #                 "evaluations": avg_over_time of a breach series recorded at each evaluation
    series: Callable[[Objective, list[float], float], dict[str, str]]


def _values(values: list[float]) -> str:
    """promtool's expanding notation for a list of values: arithmetic runs as `a+bxn`."""
    parts, i = [], 0
    while i < len(values):
        j = i + 1
        step = values[j] - values[i] if j < len(values) else 0.0
        while j + 1 < len(values) and values[j + 1] - values[j] == step:
            j += 1
        count = j - i if j < len(values) else 0
        if count == 0:
            parts.append(number(values[i]))
            i += 1
            continue
        sign = "+" if step >= 0 else "-"
        parts.append(f"{number(values[i])}{sign}{number(abs(step))}x{count}")
        i = j + 1
    return " ".join(parts)


def _counter(start: float, increments: list[float]) -> str:
    """A counter from its increments, each rounded to a 1/1024: promtool adds a run's step again and
    again, and only binary fractions add up exactly (a run ending 1e-10 high would read as a reset)."""
    values, total = [], float(start)
    for k, increment in enumerate(increments):
        total += round(increment * 1024) / 1024 if k else 0.0
        values.append(total)
    return _values(values)


def _availability(objective: Objective, bad: list[float], interval: float) -> dict[str, str]:
    return {selector("pg_up", BASE): _values([1 - b for b in bad])}


def _cache_hit(objective: Objective, bad: list[float], interval: float) -> dict[str, str]:
    labels = {**BASE, "datid": "16384", "datname": "app"}
    blocks = 6000  # per sample: 100 a second at 1m, above the cache_hit_ratio threshold's traffic floor
    return {
        selector("pg_stat_database_blks_hit", labels): _counter(1e8, [blocks * (1 - b) for b in bad]),
        selector("pg_stat_database_blks_read", labels): _counter(1e6, [blocks * b for b in bad]),
    }


def _latency(objective: Objective, bad: list[float], interval: float) -> dict[str, str]:
    bound = objective.bound or 0.0
    calls = 100
    if objective.source == "application":
        labels = {**BASE, **{name: "x" for name in objective.metric_labels}}
        metric = objective.metric
        return {
            selector(f"{metric}_bucket", {**labels, "le": number(bound)}):
                _counter(1e6, [calls * (1 - b) for b in bad]),
            selector(f"{metric}_bucket", {**labels, "le": "+Inf"}): _counter(1e6, [calls] * len(bad)),
            selector(f"{metric}_count", labels): _counter(1e6, [calls] * len(bad)),
        }
    if objective.source == "log":  # the log's slow executions over all calls of one statement
        histogram = "pg_log_statement_duration_seconds"
        statement = {**BASE, "user": "app", "datname": "app", "queryid": "1001"}
        return {
            selector("pg_stat_statements_calls_total", statement): _counter(1e6, [calls] * len(bad)),
            selector(f"{histogram}_bucket", {**BASE, "le": repr(float(bound))}): _counter(1e3, [0.0] * len(bad)),
            selector(f"{histogram}_count", BASE): _counter(1e3, [calls * b for b in bad]),
        }
    # two statements: a fast one (a twentieth of the bound) and a slow one (2.5 times the bound)
    fast = {**BASE, "user": "app", "datname": "app", "queryid": "1001"}
    slow = {**fast, "queryid": "1002"}
    return {
        selector("pg_stat_statements_calls_total", fast): _counter(1e6, [calls * (1 - b) for b in bad]),
        selector("pg_stat_statements_seconds_total", fast): _counter(1e4, [calls * (1 - b) * bound / 20 for b in bad]),
        selector("pg_stat_statements_calls_total", slow): _counter(1e3, [calls * b for b in bad]),
        selector("pg_stat_statements_seconds_total", slow): _counter(1e3, [calls * b * bound * 2.5 for b in bad]),
    }


# The backup collector's series carry job, instance and target only, not the target's constant labels.
_BACKUP = {key: BASE[key] for key in ("job", "instance", "target")}


def _rpo(objective: Objective, bad: list[float], interval: float) -> dict[str, str]:
    bound, backup_age = objective.bound or 0.0, objective.backup_age or 0.0
    # the newest verified backup stays half the allowed age old: a new one verifies as time passes
    stamps = [k * interval - backup_age / 2 for k in range(len(bad))]
    return {
        selector("pg_up", BASE): _values([1.0] * len(bad)),
        selector("pg_stat_archiver_last_archive_age", BASE): _values([bound * 2 if b else bound / 3 for b in bad]),
        selector("pgvigil_backup_verified_backup_timestamp_seconds", _BACKUP): _values(stamps),
    }


def _rto(objective: Objective, bad: list[float], interval: float) -> dict[str, str]:
    bound = objective.bound or 0.0
    return {
        selector("pg_up", BASE): _values([1.0] * len(bad)),
        selector("pgvigil_backup_last_restore_duration_seconds", _BACKUP):
            _values([bound * 1.5 if b else bound / 2 for b in bad]),
    }


SIGNALS = {
    # 15 s samples: at 99.9 % a single failed scrape of a minute would already be 2 % of an hour
    "availability": Signal(15, True, "samples", _availability),
    "cache_hit": Signal(60, False, "increments", _cache_hit),
    "latency": Signal(60, False, "increments", _latency),
    "rpo": Signal(60, True, "evaluations", _rpo),
    "rto": Signal(60, True, "evaluations", _rto),
}


class Timeline:
    """The bad fraction of every sample of one scenario, and a model of the window ratios."""

    def __init__(self, objective: Objective, segments: list[tuple[float, float]], eval_interval: float) -> None:
        self.objective = objective
        self.signal = SIGNALS[objective.kind]
        self.scale = objective.period / REFERENCE_PERIOD
        self.interval = self.signal.interval * self.scale
        self.eval_interval = eval_interval
        self.bad: list[float] = []
        for minutes, fraction in segments:
            count = int(round(minutes * 60 * self.scale / self.interval))
            self.bad.extend(_spread(fraction, count) if self.signal.binary else [fraction] * count)

    def series(self) -> dict[str, str]:
        return self.signal.series(self.objective, self.bad, self.interval)

    def ratio(self, at: float, window: float) -> float:
        """The error ratio over [at - window, at] (Prometheus 2's closed range), in seconds."""
        if self.signal.averaging == "evaluations":
            ticks = [k * self.eval_interval for k in range(int(at // self.eval_interval) + 1)]
            chosen = [self.bad[min(int(t // self.interval), len(self.bad) - 1)] for t in ticks if t >= at - window]
        else:
            first = max(0, math.ceil((at - window) / self.interval - 1e-9))
            last = min(int(at // self.interval + 1e-9), len(self.bad) - 1)
            chosen = self.bad[first:last + 1]
            if self.signal.averaging == "increments":
                chosen = chosen[1:]  # the oldest sample in the window only starts the first increase
        return sum(chosen) / len(chosen) if chosen else 0.0

    def firing(self, at: float) -> list[str] | None:
        """Severities firing at `at` seconds; None when a ratio is too close to its level to tell."""
        states = []
        for severity, burns in SEVERITIES:
            state = _any(_all([*(self._above(at, window * self.scale, burn) for window in (burn.long, burn.short)),
                               self._history(at, burn.long)])
                         for burn in burns)
            if state is None:
                return None
            if state:
                states.append(severity)
        return states

    def _history(self, at: float, long: int) -> bool | None:
        """The rules' coverage guard: a window of 6h or longer holds MIN_HISTORY seconds of the recorded
        ratio (recorded from the first evaluation on); None within two evaluations of the edge."""
        if long < GUARDED_FROM:
            return True
        held = min(at, long * self.scale)  # from the first evaluation, give or take the first input sample
        history = MIN_HISTORY * self.scale
        if abs(held - history) <= 2 * self.eval_interval + self.interval:
            return None
        return held > history

    def _above(self, at: float, window: float, burn: Burn) -> bool | None:
        level = burn.factor * self.objective.budget
        ratio = self.ratio(at, window)
        if ratio > level * (1 + MARGIN):
            return True
        if ratio < level * (1 - MARGIN):
            return False
        return None


def _spread(fraction: float, count: int) -> list[float]:
    """`count` good/bad samples with `fraction` of them bad, evenly spaced, the first one good."""
    return [1.0 if math.floor((j + 1) * fraction) > math.floor(j * fraction) else 0.0 for j in range(count)]


def _all(states: Iterable[bool | None]) -> bool | None:
    values = list(states)
    if False in values:
        return False
    return None if None in values else True


def _any(states: Iterable[bool | None]) -> bool | None:
    values = list(states)
    if True in values:
        return True
    return None if None in values else False


@dataclass(frozen=True)
class Check:
    minute: float  # of a 30-day period; scaled with the objective
    shift: bool = True  # may move a few minutes later when the model cannot tell at this one


def scenarios(objective: Objective) -> list[tuple[str, list[tuple[float, float]], list[Check]]]:
    """(title, segments of (minutes, bad fraction), checks) of every scenario of one objective."""
    budget = objective.budget
    healthy = 0.5 * budget
    interval_minutes = SIGNALS[objective.kind].interval / 60
    # 60 % of the samples an hour may lose before paging, rounded to whole samples (at most 80 %)
    paging_samples = FAST_FACTOR * budget * 60 / interval_minutes
    samples = round(0.6 * paging_samples)
    blip = max(1, samples if samples <= 0.8 * paging_samples else math.floor(0.6 * paging_samples)) * interval_minutes
    rest = LENGTH - HEALTHY_PREFIX - blip
    return [
        ("healthy: half the budget's error rate fires nothing", [(LENGTH, healthy)],
         [Check(60), Check(120), Check(LENGTH - 5)]),
        ("fast burn: everything fails after two healthy hours, and it pages",
         [(HEALTHY_PREFIX, healthy), (LENGTH - HEALTHY_PREFIX, 1.0)], [Check(HEALTHY_PREFIX - 1)]),
        ("slow burn: 4.5 times the budget's error rate opens a ticket once 90 minutes are recorded, never pages",
         [(LENGTH, 4.5 * budget)],
         [Check(60, shift=False), Check(150), Check(LENGTH - 5)]),
        # error-free around the blip: over the (still short) history the 3-day ratio stays clear of its level
        (f"blip: {_minutes(blip)} of full failure after two error-free hours does not page",
         [(HEALTHY_PREFIX, 0.0), (blip, 1.0), (rest, 0.0)],
         [Check(HEALTHY_PREFIX + math.ceil(blip)), Check(HEALTHY_PREFIX + math.ceil(blip) + 5),
          Check(HEALTHY_PREFIX + math.ceil(blip) + 15)]),
    ]


def detection_minutes(objective: Objective) -> int:
    """The workbook's time to page on a full failure: the fast page's budget share of an hour."""
    return math.ceil(FAST_FACTOR * objective.budget * 60)


def _minutes(minutes: float) -> str:
    return f"{number(minutes)}m" if minutes >= 1 else f"{number(minutes * 60)}s"


def test_group(objective: Objective, title: str, segments: list[tuple[float, float]], checks: list[Check],
               eval_interval: float) -> dict:
    timeline = Timeline(objective, segments, eval_interval)
    scale = timeline.scale
    alert_checks = []
    for check in checks:
        alert_checks.append(_alert_check(objective, timeline, check, scale))
    if title.startswith("fast burn"):
        alert_checks.append(_detection_check(objective, timeline, scale))
        title = f"{title} within {alert_checks[-1]['_minutes']}m (workbook: {detection_minutes(objective)}m)"
    for checked in alert_checks:
        checked.pop("_minutes", None)
    group = {
        "name": f"{objective.alert_name} {title}",
        "interval": promql_duration(timeline.interval),
        "input_series": [{"series": name, "values": values} for name, values in timeline.series().items()],
        "alert_rule_test": alert_checks,
    }
    if title.startswith("healthy"):
        # exactly one series per target, with the target's constant labels, and budget left
        group["promql_expr_test"] = [{
            "expr": f"count by (target, cluster) (pgvigil:slo_budget_remaining:ratio{slo_selector(objective)} > 0)",
            "eval_time": alert_checks[-1]["eval_time"],
            "exp_samples": [{"labels": selector("", {"target": BASE["target"], "cluster": BASE["cluster"]}),
                             "value": 1}],
        }]
    return group


def _alert_check(objective: Objective, timeline: Timeline, check: Check, scale: float) -> dict:
    # later first, then earlier: any minute near the planned one shows the same behaviour
    extras = [*range(0, 16), *range(-1, -11, -1)] if check.shift else [0]
    for extra in extras:
        at = _eval_time((check.minute + extra) * 60 * scale, timeline.eval_interval)
        firing = timeline.firing(at)
        if firing is not None:
            return _expected(objective, at, firing)
    raise BundleError(f"objective {objective.name}: the generated tests cannot tell whether its alerts fire "
                      f"at minute {check.minute} (a burn ratio sits on an alert level); adjust the objective")


def _detection_check(objective: Objective, timeline: Timeline, scale: float) -> dict:
    """The first minute after the failure starts at which the page is certainly firing."""
    for minute in range(HEALTHY_PREFIX + 1, LENGTH):
        at = _eval_time(minute * 60 * scale, timeline.eval_interval)
        firing = timeline.firing(at)
        if firing is not None and "critical" in firing:
            return {**_expected(objective, at, firing), "_minutes": minute - HEALTHY_PREFIX}
    raise BundleError(f"objective {objective.name}: a full failure does not page within an hour")


def _eval_time(seconds: float, eval_interval: float) -> float:
    return round(seconds / eval_interval) * eval_interval


def _expected(objective: Objective, at: float, firing: list[str]) -> dict:
    burns = dict(SEVERITIES)
    labels = {**BASE, "slo": objective.name}
    return {
        "eval_time": promql_duration(at),
        "alertname": objective.alert_name,
        "exp_alerts": [
            {"exp_labels": {**labels, "severity": severity},
             "exp_annotations": {"summary": summary(objective, severity),
                                 "description": description(objective, burns[severity], labels["target"]),
                                 "runbook_url": runbook_url(objective)}}
            for severity in firing
        ],
    }


def unit_test_file(objectives: dict[str, Objective]) -> dict:
    """The content of alerts/tests/pgvigil-slos.test.yml."""
    eval_interval = 60 * min(objective.period for objective in objectives.values()) / REFERENCE_PERIOD
    groups = [
        test_group(objective, title, segments, checks, eval_interval)
        for objective in objectives.values()
        for title, segments, checks in scenarios(objective)
    ]
    return {"rule_files": [RULE_FILE], "evaluation_interval": promql_duration(eval_interval), "tests": groups}


__all__ = ["Timeline", "detection_minutes", "scenarios", "unit_test_file"]
