"""End to end: a real condition on a real PostgreSQL reaches a webhook through the shipped rules.

PostgreSQL (max_connections 20) -> pgvigil serving /metrics -> a real Prometheus scraping it every
second with the generated rules -> a real Alertmanager with the shipped routes and inhibit rules,
every receiver a webhook in this test. Opening connections above the warning level of connection
utilization makes PostgresConnectionUtilizationHigh go pending, then firing, then arrive at the
warning receiver. The only change from the shipped bundle is a `for:` of seconds instead of
minutes, made the way users change numbers: through the thresholds.
"""
from __future__ import annotations

import dataclasses
import json
import urllib.request

import psycopg
import pytest
from conftest import requires_prometheus_stack, wait_until

from exporter.bundle import alertmanager, rules
from exporter.bundle.thresholds import load_thresholds
from exporter.config import parse_config
from exporter.dev import stack
from exporter.dev.throwaway import ThrowawayCluster
from exporter.server import start_server

MAX_CONNECTIONS = 20
RESERVED = 3  # PostgreSQL's default superuser_reserved_connections
ALERT = "PostgresConnectionUtilizationHigh"

pytestmark = requires_prometheus_stack


@pytest.fixture(scope="module")
def small_cluster():
    with ThrowawayCluster(settings={"max_connections": str(MAX_CONNECTIONS)}) as pg:
        yield pg


@pytest.fixture(scope="module")
def webhook():
    with stack.WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def alertmanager_service(tmp_path_factory, webhook):
    path = tmp_path_factory.mktemp("alertmanager") / "alertmanager.yml"
    path.write_text(alertmanager.render(alertmanager.webhook_config(webhook.url)))
    with stack.start_alertmanager(path) as service:
        yield service


@pytest.fixture(scope="module")
def pipeline(small_cluster, alertmanager_service, tmp_path_factory):
    """pgvigil and Prometheus with the bundle's rules; connection utilization waits 3s, not 5m."""
    thresholds = load_thresholds()
    thresholds["connection_utilization"] = dataclasses.replace(thresholds["connection_utilization"], for_="3s")
    folder = tmp_path_factory.mktemp("rules")
    rule_files = [folder / "pgvigil-rules.yml", folder / "pgvigil-alerts.yml"]
    rule_files[0].write_text(rules.render_yaml(rules.recording_groups(), "e2e"))
    rule_files[1].write_text(rules.render_yaml(rules.alert_groups(thresholds), "e2e"))
    config = parse_config(
        "targets:\n"
        # Not sampled: the sampler's session, opened after the first scrape, would move the count under test.
        f"  primary:\n    dsn: {small_cluster.dsn('postgres')}\n    labels: {{cluster: e2e}}\n"
        "    sample_interval: off\n"
        "collectors: [default]\n"
    )
    server = start_server(config)
    try:
        with stack.start_prometheus([server.url], rule_files, alertmanager_url=alertmanager_service.url) as prom:
            yield prom
    finally:
        server.stop()


def connection_count(prom: stack.Service) -> int | None:
    result = prom.query('sum(pg_stat_activity_count{target="primary"})')
    return int(float(result[0]["value"][1])) if result else None


def test_connections_above_warning_page_the_warning_receiver(small_cluster, pipeline, webhook):
    prom = pipeline
    usable = MAX_CONNECTIONS - RESERVED
    baseline = wait_until(lambda: connection_count(prom), 60, "pgvigil's first scrape in Prometheus")
    ratio = wait_until(lambda: prom.query("pgvigil:connection_utilization:ratio"), 30, "the recording rule")
    assert ratio[0]["metric"]["target"] == "primary" and ratio[0]["metric"]["cluster"] == "e2e"
    assert not [a for a in prom.alerts() if a["labels"]["alertname"] == ALERT]

    # 15 of 17 usable connections: 88 %, above the 80 % warning and below the 95 % critical level
    wanted = 15
    held = [psycopg.connect(small_cluster.dsn("postgres")) for _ in range(wanted - baseline)]
    try:
        wait_until(lambda: connection_count(prom) == wanted, 30, f"{wanted} connections seen by Prometheus")

        def alert_states() -> set:
            return {(a["labels"]["severity"], a["state"]) for a in prom.alerts() if a["labels"]["alertname"] == ALERT}

        seen = set()

        def firing() -> bool:
            seen.update(alert_states())
            return ("warning", "firing") in seen

        wait_until(firing, 60, f"{ALERT} to fire")
        # Prometheus keeps an ALERTS series for every evaluation an alert was pending: proof of the pending
        # state that does not depend on polling fast enough to see it.
        pending = prom.query(
            f'max_over_time(ALERTS{{alertname="{ALERT}",alertstate="pending",severity="warning"}}[10m])')
        assert pending, f"the alert skipped its pending state: {seen}"
        assert not any(severity == "critical" for severity, _ in seen)

        alert = next(a for a in prom.alerts() if a["labels"]["alertname"] == ALERT)
        assert alert["labels"]["target"] == "primary"
        assert alert["annotations"]["description"] == (
            f"Target primary uses {round(wanted / usable * 100, 2):.4g}% of its usable connections (alert above 80%)."
        )

        note = webhook.wait_for(
            lambda n: n.get("status") == "firing"
            and any(a["labels"].get("alertname") == ALERT for a in n.get("alerts", [])), timeout=60)
        assert note is not None, "Alertmanager never notified the webhook"
        assert note["_path"] == "/database-warning" and note["receiver"] == "database-warning"
        assert note["groupLabels"] == {"alertname": ALERT, "target": "primary"}
        sent = [a for a in note["alerts"] if a["labels"]["alertname"] == ALERT][0]
        assert sent["labels"]["severity"] == "warning"
        assert sent["annotations"]["runbook_url"].endswith("#postgresconnectionutilizationhigh")
    finally:
        for conn in held:
            conn.close()


def post_alerts(am: stack.Service, alerts: list[dict]) -> None:
    request = urllib.request.Request(am.url + "/api/v2/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def test_inhibition_critical_mutes_warning_and_down_mutes_target(alertmanager_service, webhook):
    """The shipped inhibit rules, checked on a real Alertmanager with alerts posted to its API."""
    am = alertmanager_service
    post_alerts(am, [
        {"labels": {"alertname": "PostgresDeadTuplesHigh", "target": "inhib", "severity": "critical", "relname": "t"}},
        {"labels": {"alertname": "PostgresDeadTuplesHigh", "target": "inhib", "severity": "warning", "relname": "t"}},
        {"labels": {"alertname": "PostgresDeadTuplesHigh", "target": "inhib", "severity": "warning", "relname": "u"}},
        {"labels": {"alertname": "PostgresDown", "target": "gone", "severity": "critical"}},
        {"labels": {"alertname": "PostgresLongRunningQuery", "target": "gone", "severity": "warning", "datname": "a"}},
    ])

    def state(alertname: str, target: str, **labels: str) -> dict:
        found = [a for a in am.get_json("/api/v2/alerts")
                 if a["labels"]["alertname"] == alertname and a["labels"]["target"] == target
                 and all(a["labels"].get(k) == v for k, v in labels.items())]
        return found[0]["status"] if found else {}

    # inhibition is computed once the source alert is known; give Alertmanager a moment
    wait_until(lambda: state("PostgresDeadTuplesHigh", "inhib", severity="warning", relname="t").get("state")
               == "suppressed", 20, "the warning twin of a critical alert to be suppressed")
    assert state("PostgresDeadTuplesHigh", "inhib", severity="critical", relname="t")["state"] == "active"
    assert state("PostgresDeadTuplesHigh", "inhib", severity="warning", relname="u")["state"] == "active"
    wait_until(lambda: state("PostgresLongRunningQuery", "gone").get("state") == "suppressed", 20,
               "PostgresDown to mute the rest of its target")
    assert state("PostgresDown", "gone")["state"] == "active"

    critical = webhook.wait_for(lambda n: n.get("receiver") == "database-critical"
                                and n["groupLabels"].get("target") == "gone", timeout=30)
    assert critical is not None and critical["_path"] == "/database-critical"
