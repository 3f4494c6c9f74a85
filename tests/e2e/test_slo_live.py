"""End to end: a test cluster made unavailable spends the availability budget, and the burn-rate
page reaches Alertmanager's critical receiver, through the rules `pgvigil bundle` generates.

PostgreSQL -> pgvigil serving /metrics -> a real Prometheus scraping and evaluating every second
with the bundle's rule files -> a real Alertmanager with the shipped routes, every receiver a webhook.
The objectives file is a test-only one with a 6-hour period, so the burn windows scale down with it
(5m -> 2.5s, 1h -> 30s, 6h -> 3m, ...) and a 25-second outage is a fast burn: the budget is 21.6 s.
It goes through the same code path as the shipped file (`write_bundle(objectives_path=...)`).
"""
from __future__ import annotations

import time

import pytest
from conftest import requires_prometheus_stack, wait_until

from exporter.bundle import ALERT_FILES, alertmanager, write_bundle
from exporter.config import parse_config
from exporter.dev import stack
from exporter.dev.throwaway import ThrowawayCluster
from exporter.server import start_server

ALERT = "PostgresAvailabilityBudgetBurn"
OUTAGE_SECONDS = 25
OBJECTIVES = """\
availability:
  kind: availability
  objective: 0.999
  period: 6h
  description: test-only period, so that the windows are seconds long
"""
BUDGET = 'pgvigil:slo_budget_remaining:ratio{slo="availability", target="primary"}'

pytestmark = requires_prometheus_stack


@pytest.fixture(scope="module")
def cluster():
    with ThrowawayCluster() as pg:
        yield pg


@pytest.fixture(scope="module")
def webhook():
    with stack.WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def pipeline(cluster, webhook, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    objectives = folder / "objectives.yaml"
    objectives.write_text(OBJECTIVES)
    written = write_bundle(None, folder / "out", objectives_path=objectives)
    rule_files = [folder / "out" / ALERT_FILES[key] for key in ("rules", "alerts", "slos")]
    assert set(rule_files) <= set(written)
    am_config = folder / "alertmanager.yml"
    am_config.write_text(alertmanager.render(alertmanager.webhook_config(webhook.url)))
    config = parse_config(f"targets:\n  primary:\n    dsn: {cluster.dsn('postgres')}\ncollectors: [connections]\n")
    server = start_server(config)
    try:
        with stack.start_alertmanager(am_config) as am:
            with stack.start_prometheus([server.url], rule_files, alertmanager_url=am.url) as prom:
                yield prom
    finally:
        server.stop()


def value(prom: stack.Service, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def burn_alerts(prom: stack.Service) -> dict[str, str]:
    """severity -> state of the availability burn alerts Prometheus holds."""
    return {a["labels"]["severity"]: a["state"] for a in prom.alerts() if a["labels"]["alertname"] == ALERT}


def test_an_outage_spends_the_budget_and_pages(cluster, pipeline, webhook):
    prom = pipeline
    # a healthy stretch first: the whole budget is left and nothing burns
    wait_until(lambda: value(prom, "count_over_time(pg_up{target='primary'}[10s]) >= 8"), 60, "10 s of scrapes")
    assert value(prom, BUDGET) == 1.0
    assert burn_alerts(prom) == {}

    cluster.stop()
    try:
        wait_until(lambda: value(prom, 'pg_up{target="primary"}') == 0.0, 20, "pg_up to drop to 0")
        firing = wait_until(lambda: burn_alerts(prom).get("critical") == "firing", OUTAGE_SECONDS,
                            f"{ALERT} to page within the outage")
        assert firing
        budget_at_page = value(prom, BUDGET)
        time.sleep(max(0.0, OUTAGE_SECONDS - 10))
        budget_at_end = value(prom, BUDGET)
    finally:
        cluster.start()

    # the budget dropped, and kept dropping while the outage lasted: more than the 6-hour period's
    # 21.6 s of failed scrapes went within the minute or two Prometheus has seen (overspent: below 0)
    assert budget_at_page is not None and budget_at_end is not None
    assert budget_at_end < budget_at_page < 1.0 and budget_at_end < 0, (budget_at_page, budget_at_end)

    note = webhook.wait_for(lambda n: n.get("status") == "firing" and n.get("receiver") == "database-critical"
                            and any(a["labels"].get("alertname") == ALERT for a in n.get("alerts", [])), timeout=60)
    assert note is not None, "Alertmanager never sent the page to the critical receiver"
    assert note["_path"] == "/database-critical" and note["groupLabels"] == {"alertname": ALERT, "target": "primary"}
    sent = next(a for a in note["alerts"] if a["labels"]["alertname"] == ALERT)
    assert sent["labels"]["severity"] == "critical" and sent["labels"]["slo"] == "availability"
    assert sent["annotations"]["runbook_url"].endswith("#postgresavailabilitybudgetburn")
    assert sent["annotations"]["description"].startswith(
        "Target primary is spending the 6h error budget of its availability objective (99.9%) at 14.4 times")

    # back up: the page resolves once its short windows (2.5 s and 15 s here) are clean again,
    # while the slow burn's ticket, over its day-long (here 12-minute) window, keeps the record
    wait_until(lambda: value(prom, 'pg_up{target="primary"}') == 1.0, 30, "pgvigil to reach PostgreSQL again")
    wait_until(lambda: "critical" not in burn_alerts(prom), 60, "the page to resolve after the outage")
    assert burn_alerts(prom).get("warning") == "firing"
