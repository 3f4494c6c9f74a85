"""The scenarios of a promtool rule test file replayed against another engine (VictoriaMetrics).

promtool is the reference: alerts/tests/*.test.yml are its tests, and they pass on Prometheus. Here each
test case's `input_series` are imported into VictoriaMetrics at their timestamps and the rule files are
evaluated the way vmalert evaluates them in production: an instant query per rule and evaluation step,
with `step` as vmalert's `-datasource.queryStep` (5m, Prometheus' look-back). Recording rules run in
file order over the whole case and their results are imported before the next rule reads them; an
alert is active from the first step its expression returns the series, and fires once it has been
active for its `for:`, as in Prometheus. The firing alerts' labels at each `eval_time` are compared
with the test's `exp_alerts`, and each `promql_expr_test` with its `exp_samples`.

Test cases never see each other's data: case k starts CASE_SPACING after case k-1.
"""
from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from exporter.dev import victoria
from exporter.dev.stack import Service

EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: aligned to every step, far from "now"
CASE_SPACING = 4 * 86_400  # longer than any case plus the longest range of a rule (3d)
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "y": 31_536_000}
_UNSIGNED = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = re.compile(rf"^(?P<start>[-+]?{_UNSIGNED}|_)(?:(?P<delta>[-+]{_UNSIGNED})?x(?P<times>\d+))?$")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def seconds(text: str | int) -> float:
    """A Prometheus duration (`1h30m`, `15s`) in seconds."""
    if isinstance(text, int):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def expand_values(values: str) -> list[float | None]:
    """promtool's expanding notation (`1+2x3 _x2 5`): a value per interval, None where there is none."""
    out: list[float | None] = []
    for term in values.split():
        match = _TERM.match(term)
        if match is None:
            raise ValueError(f"unsupported input value {term!r}")
        start, delta, times = match["start"], match["delta"], match["times"]
        if start == "_":
            out.extend([None] * (int(times) if times else 1))
            continue
        if times is None:
            out.append(float(start))
            continue
        step = float(delta) if delta else 0.0
        out.extend(float(start) + step * i for i in range(int(times) + 1))
    return out


def labels_of(series: str) -> dict[str, str]:
    """`name{a="b"}` -> {"__name__": name, "a": "b"} (the names and values the generated tests use)."""
    name, _, rest = series.partition("{")
    labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', rest))
    return {"__name__": name.strip(), **labels} if name.strip() else labels


def exposition_line(labels: dict[str, str], value: float, at: float) -> str:
    name = labels.get("__name__", "")
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{inner}}} {value!r} {int(at * 1000)}"


@dataclass(frozen=True)
class Rule:
    group: str
    name: str  # the record or the alert
    expr: str
    labels: dict[str, str]
    for_: float
    alerting: bool


def load_rules(paths: list[Path]) -> list[Rule]:
    out = []
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append(Rule(group["name"], rule.get("record") or rule["alert"], rule["expr"],
                                {k: str(v) for k, v in (rule.get("labels") or {}).items()},
                                seconds(rule.get("for", "0s")), "alert" in rule))
    return out


def metric_names(expr: str) -> set[str]:
    """Every identifier of an expression: a superset of the metric names it reads (good enough to prune)."""
    return set(_NAME.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)))


@dataclass
class Mismatch:
    case: str
    where: str
    expected: object
    got: object

    def __str__(self) -> str:
        return f"{self.case} @ {self.where}: promtool expects {self.expected}, VictoriaMetrics gives {self.got}"


@dataclass
class Replay:
    """One test file replayed into a running VictoriaMetrics (`engine`)."""
    engine: Service
    test_file: Path
    pool: ThreadPoolExecutor
    mismatches: list[Mismatch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # expressions the engine refused
    cases: int = 0
    queries: int = 0
    firing_compared: int = 0  # checks where promtool expects an alert to fire

    def run(self, first_case: int = 0) -> int:
        """Replay every case; returns the index after the last one (for the next file's cases)."""
        document = yaml.safe_load(self.test_file.read_text())
        rules = load_rules([(self.test_file.parent / name).resolve() for name in document["rule_files"]])
        interval = seconds(document.get("evaluation_interval", "1m"))
        for index, case in enumerate(document["tests"], start=first_case):
            self._case(case, EPOCH + index * CASE_SPACING, rules, interval)
            self.cases += 1
        return first_case + len(document["tests"])

    def _case(self, case: dict, base: float, rules: list[Rule], interval: float) -> None:
        step = seconds(case.get("interval", "1m"))
        lines, inputs = [], set()
        for series in case["input_series"]:
            labels = labels_of(series["series"])
            inputs.add(labels["__name__"])
            # a timestamp's value is relative to promtool's epoch (0), as `time()` is: moved with the case
            shift = base if labels["__name__"].endswith("timestamp_seconds") else 0
            lines += [exposition_line(labels, v + shift, base + i * step)
                      for i, v in enumerate(expand_values(series["values"])) if v is not None]
        victoria.import_text(self.engine, "\n".join(lines) + "\n")
        checks = case.get("alert_rule_test", [])
        exprs = case.get("promql_expr_test", [])
        end = max([seconds(c["eval_time"]) for c in checks + exprs] or [0])
        times = [base + i * interval for i in range(int(end // interval) + 1)]
        wanted = {c["alertname"] for c in checks}
        needed = set().union(*(metric_names(e["expr"]) for e in exprs)) if exprs else set()
        for rule in rules:
            if rule.alerting and rule.name in wanted:
                needed |= metric_names(rule.expr)
        for rule in reversed(rules):  # what the alerts read, through the recording rules they read
            if not rule.alerting and rule.name in needed:
                needed |= metric_names(rule.expr)
        known = set(inputs)
        for rule in rules:  # recording rules in file order, only those on the path from inputs to checks
            if rule.alerting or rule.name not in needed or not (metric_names(rule.expr) & known):
                continue
            known.add(rule.name)
            self._record(rule, times)
        firing = self._alerts([r for r in rules if r.alerting and r.name in wanted], times)
        name = case["name"]
        for check in checks:
            at = base + seconds(check["eval_time"])
            expected = sorted(_canonical({k: str(v) for k, v in (a.get("exp_labels") or {}).items()})
                              for a in check.get("exp_alerts") or [])
            got = sorted(_canonical(labels) for labels in firing.get((check["alertname"], at), []))
            self.firing_compared += bool(expected)
            if expected != got:
                self.mismatches.append(Mismatch(name, f"{check['eval_time']} {check['alertname']}", expected, got))
        for test in exprs:
            at = base + seconds(test["eval_time"])
            expected = sorted((_canonical(labels_of(s.get("labels", "{}"))), float(s["value"]))
                              for s in test.get("exp_samples") or [])
            got = sorted((_canonical(sample["metric"]), float(sample["value"][1]))
                         for sample in self._query(test["expr"], at))
            if not _same_samples(expected, got):
                self.mismatches.append(Mismatch(name, f"{test['eval_time']} {test['expr']}", expected, got))

    def _query(self, expr: str, at: float) -> list[dict]:
        self.queries += 1
        answer = victoria.query(self.engine, expr, at)
        if answer.get("status") != "success":
            self.errors.append(f"{expr}: {answer.get('error')}")
            return []
        return answer["data"]["result"]

    def _at_every(self, expr: str, times: list[float]) -> list[list[dict]]:
        return list(self.pool.map(lambda at: self._query(expr, at), times))

    def _record(self, rule: Rule, times: list[float]) -> None:
        lines = []
        for at, result in zip(times, self._at_every(rule.expr, times)):
            for sample in result:
                labels = {**sample["metric"], **rule.labels, "__name__": rule.name}
                value = float(sample["value"][1])
                if not math.isnan(value):
                    lines.append(exposition_line(labels, value, at))
        if lines:
            victoria.import_text(self.engine, "\n".join(lines) + "\n")

    def _alerts(self, alerting: list[Rule], times: list[float]) -> dict[tuple[str, float], list[dict]]:
        """(alertname, time) -> the label sets firing then, as Prometheus' `for:` makes them."""
        firing: dict[tuple[str, float], list[dict]] = {}
        for rule in alerting:
            active: dict[frozenset, float] = {}
            for at, result in zip(times, self._at_every(rule.expr, times)):
                now = {}
                for sample in result:
                    labels = {k: v for k, v in sample["metric"].items() if k != "__name__"} | rule.labels
                    key = frozenset(labels.items())
                    now[key] = active.get(key, at)
                    if at - now[key] >= rule.for_:
                        firing.setdefault((rule.name, at), []).append(labels)
                active = now
        return firing


def _canonical(labels: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))


def _same_samples(expected: list, got: list) -> bool:
    return len(expected) == len(got) and all(
        a[0] == b[0] and math.isclose(a[1], b[1], rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(expected, got))
