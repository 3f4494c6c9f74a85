"""The shipped rules and dashboards on VictoriaMetrics: MetricsQL answers what PromQL answers.

Every scenario of the generated promtool tests (alerts/tests/*.test.yml) is replayed into a real
VictoriaMetrics and evaluated the way vmalert evaluates rules (tests/e2e/rule_replay.py): the alerts
firing at each `eval_time` must be exactly those promtool expects from Prometheus. vmalert itself
loads the rule files (expressions and annotation templates validated by its MetricsQL parser), and
every dashboard query is accepted by VictoriaMetrics' query API. docs/fleet.md lists what differs
between the engines and how the generator avoids it.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from rule_replay import Replay, expand_values, seconds
from test_dashboards_live import VARIABLE, panel_queries, substitute

from exporter.dev import stack, victoria

ROOT = Path(__file__).resolve().parents[2]
TEST_FILES = [*sorted((ROOT / "alerts" / "tests").glob("*.test.yml")),
              ROOT / "deploy" / "fleet" / "tests" / "pgvigil-fleet-alerts.test.yml"]
EPOCH_DASHBOARDS = 1_700_000_000  # 2023-11-14: before the replay's cases, after nothing else
RULE_FILES = [*sorted((ROOT / "alerts").glob("pgvigil-*.yml")), ROOT / "deploy" / "fleet" / "pgvigil-fleet-alerts.yml"]

pytestmark = pytest.mark.skipif(not victoria.installed(),
                                reason="victoria-metrics not installed (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with victoria.start_victoria_metrics(tmp_path_factory.mktemp("vm")) as service:
        yield service


def test_promtool_notation_expands_as_promtool_does():
    assert expand_values("1+2x3 _x2 5 -1-0.5x1 1e+06+0x1") == [1, 3, 5, 7, None, None, 5, -1, -1.5, 1e6, 1e6]
    assert seconds("1h30m") == 5400 and seconds("15s") == 15 and seconds("3d") == 259_200
    with pytest.raises(ValueError, match="unsupported input value 'stale'"):
        expand_values("stale")


def test_every_alert_scenario_fires_the_same_on_victoria_metrics(engine):
    assert [path.name for path in TEST_FILES] == ["pgvigil-alerts.test.yml", "pgvigil-slos.test.yml",
                                                  "pgvigil-fleet-alerts.test.yml"]
    first, compared = 0, 0
    with ThreadPoolExecutor(8) as pool:
        for path in TEST_FILES:
            replay = Replay(engine, path, pool)
            first = replay.run(first)
            assert replay.errors == [], f"MetricsQL refused expressions of {path.name}: {replay.errors}"
            assert replay.mismatches == [], "\n".join(map(str, replay.mismatches))
            assert replay.cases >= 3 and replay.queries > replay.cases
            compared += replay.firing_compared
    # not vacuous: many scenarios expect an alert to fire, and VictoriaMetrics fired each of them
    assert compared >= 50


def test_vmalert_loads_every_generated_rule_file():
    answer = subprocess.run([stack.find_binary(victoria.VMALERT), "-dryRun", "-loggerLevel=ERROR",
                             *[f"-rule={path}" for path in RULE_FILES]],
                            capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stdout + answer.stderr


def test_every_dashboard_query_is_valid_metricsql(engine):
    refused = []
    for key, expr in panel_queries():
        answer = victoria.query(engine, substitute(expr), 1_704_067_200)
        if answer.get("status") != "success":
            refused.append(f"{key}: {expr}: {answer.get('error')}")
    assert refused == []


SCRAPES = 12  # a pgvigil scrape every 15 s for 3 minutes: enough for the panels' 1m rate windows
RATES = re.compile(r"\b(rate|irate|increase|delta|idelta|deriv)\(")
# A counter born inside a window is counted from 0 by MetricsQL's increase() and from its first sample by
# PromQL's (docs/fleet.md): a difference by design, not one a query could avoid. So the comparison keeps
# every counter's birth out of the window: only series of the first scrape are backfilled, and the
# dashboard range (2 m) starts after that scrape.
# the dashboard variables as Grafana fills them for 15 s scrapes
AT_15S = {"target": ".*", "datname": ".*", "pooler": ".*", "__rate_interval": "1m", "__interval": "15s",
          "__range": "2m"}
SCRAPED = 'job="pgvigil",instance="pgvigil:9187"'


def at_15s(expr: str) -> str:
    return VARIABLE.sub(lambda match: AT_15S[match.group(1) or match.group(2)], expr)


def scraped(line: str) -> str:
    """A sample line with the labels Prometheus adds when it scrapes pgvigil."""
    name, brace, rest = line.partition("{")
    if brace:
        return f"{name}{{{SCRAPED},{rest}"
    name, _, value = line.partition(" ")
    return f"{name}{{{SCRAPED}}} {value}"


def samples(body: str) -> dict[str, str]:
    """A scrape's sample lines by series (name and labels), without comments and NaN or infinite values."""
    return {line.rpartition(" ")[0]: line for line in body.splitlines()
            if line and not line.startswith("#") and not line.endswith(("NaN", "Inf"))}


def backfill_text(bodies: list[str], start: int) -> tuple[str, str]:
    """Real pgvigil scrapes as samples `start + 15 s * i`, of the series the first scrape has:
    (OpenMetrics for promtool, text for VictoriaMetrics)."""
    openmetrics, prometheus = [], []
    first = samples(bodies[0]).keys()
    for index, body in enumerate(bodies):
        at = start + 15 * index
        for series, line in samples(body).items():
            if series in first:
                openmetrics.append(f"{scraped(line)} {at}")
                prometheus.append(f"{scraped(line)} {at * 1000}")
    return "\n".join(openmetrics) + "\n# EOF\n", "\n".join(prometheus) + "\n"


def sleep_until_cancelled(connection: psycopg.Connection) -> None:
    with contextlib.suppress(psycopg.errors.QueryCanceled):
        connection.execute("SELECT pg_sleep(600)")


@pytest.fixture(scope="module")
def both_engines(engine, cluster, tmp_path_factory):
    """The same real pgvigil scrapes in Prometheus (promtool backfill) and VictoriaMetrics; the time of the last."""
    from exporter.config import parse_config
    from exporter.server import start_server
    server = start_server(parse_config(f"targets:\n  primary:\n    dsn: {cluster.dsn()}\n"
                                       "    labels: {cluster: main}\n"))
    sleeper = psycopg.connect(cluster.dsn(), autocommit=True)  # an active session for the sampler's panels
    sleeping = threading.Thread(target=sleep_until_cancelled, args=(sleeper,))
    sleeping.start()
    try:
        # a first scrape starts the session sampler: the backfilled scrapes then carry its series from the first
        urllib.request.urlopen(server.url + "/metrics", timeout=60).close()
        time.sleep(2)
        bodies = []
        for _ in range(SCRAPES):
            with urllib.request.urlopen(server.url + "/metrics", timeout=60) as answer:
                bodies.append(answer.read().decode())
            time.sleep(1)
    finally:
        server.stop()
        sleeper.cancel_safe()
        sleeping.join()
        sleeper.close()
    start = EPOCH_DASHBOARDS
    openmetrics, text = backfill_text(bodies, start)
    folder = tmp_path_factory.mktemp("prom")
    (folder / "data.om").write_text(openmetrics)
    done = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(folder / "data.om"),
                           str(folder / "data")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    victoria.import_text(engine, text)
    binary = stack.find_binary(stack.PROMETHEUS_BINARIES)
    (folder / "prometheus.yml").write_text("global: {}\n")
    with stack._launch("prometheus", folder, False, lambda port: [  # noqa: SLF001 (a config of our own)
            binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
            "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}"]) as prometheus:
        yield prometheus, start + 15 * (SCRAPES - 1)


def instant(url: str, expr: str, at: int, step: str = "5m") -> dict:
    params = urllib.parse.urlencode({"query": expr, "time": str(at), "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=60) as answer:
        return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): float(s["value"][1])
                for s in json.loads(answer.read())["data"]["result"]}


@pytest.mark.skipif(not any(map(shutil.which, stack.PROMETHEUS_BINARIES)), reason="prometheus not installed")
def test_every_dashboard_query_answers_the_same_on_both_engines(both_engines, engine):
    prometheus, at = both_engines
    differ, answered = [], 0
    for key, expr in panel_queries():
        query = at_15s(expr)
        ours, theirs = instant(prometheus.url, query, at), instant(engine.url, query, at)
        # MetricsQL drops NaN results (0/0 of an idle database) where PromQL returns them: Grafana draws
        # both as a gap
        ours = {labels: value for labels, value in ours.items() if not math.isnan(value)}
        answered += bool(ours)
        # rates: VictoriaMetrics does not extrapolate to the window's edges (docs/fleet.md); all else exact
        tolerance = 0.35 if RATES.search(query) else 1e-6
        if query.startswith("topk("):  # among equal values each engine keeps other series: compare the values
            pairs = list(zip(sorted(ours.values()), sorted(theirs.values())))
            if len(ours) != len(theirs) or not all(math.isclose(a, b, rel_tol=tolerance) for a, b in pairs):
                differ.append(f"{key}: top values {sorted(ours.values())} and {sorted(theirs.values())}\n    {query}")
            continue
        if set(ours) != set(theirs):
            differ.append(f"{key}: series {sorted(set(ours) ^ set(theirs))[:3]} in one engine only\n    {query}")
            continue
        for labels, value in ours.items():
            if not math.isclose(value, theirs[labels], rel_tol=tolerance, abs_tol=1e-9):
                differ.append(f"{key}: {dict(labels)}: Prometheus {value}, VictoriaMetrics {theirs[labels]}\n"
                              f"    {query}")
    assert answered > 30, f"only {answered} panel queries returned data from the backfilled scrapes"
    assert differ == [], "\n".join(differ)
