"""The shipped rules and dashboards on VictoriaMetrics: MetricsQL answers what PromQL answers.

Every scenario of the generated promtool tests (alerts/tests/*.test.yml) is replayed into a real
VictoriaMetrics and evaluated the way vmalert evaluates rules (tests/e2e/rule_replay.py): the alerts
firing at each `eval_time` must be exactly those promtool expects from Prometheus. vmalert itself
loads the rule files (expressions and annotation templates validated by its MetricsQL parser), and
every dashboard query is accepted by VictoriaMetrics' query API. docs/fleet.md lists what differs
between the engines and how the generator avoids it.
"""
from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rule_replay import Replay, expand_values, seconds
from test_dashboards_live import panel_queries, substitute

from exporter.dev import stack, victoria

ROOT = Path(__file__).resolve().parents[2]
TEST_FILES = [*sorted((ROOT / "alerts" / "tests").glob("*.test.yml")),
              ROOT / "deploy" / "fleet" / "tests" / "pgvigil-fleet-alerts.test.yml"]
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
