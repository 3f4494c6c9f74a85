"""The monitoring itself: is the paging path (pgvigil -> Prometheus -> Alertmanager -> receivers) whole?

Every other alert assumes its way to a human works. These watch that way: Prometheus scraping
pgvigil slowly, pgvigil's own scrapes overrunning their interval, rules failing to evaluate,
Prometheus failing to hand alerts to Alertmanager, Alertmanager failing to deliver them, a rejected
configuration (which leaves the previous one running unnoticed), and an Alertmanager pair that has
lost a member (the next failure then silences every page). `PostgresExporterDown` (availability.py)
covers a pgvigil that is not scraped at all.

What no alert can say (Prometheus or every Alertmanager gone) the `PostgresWatchdog` says by its
absence: it always fires, Alertmanager sends it to a heartbeat receiver every few minutes, and the
heartbeat service pages when it stops (docs/paging.md).

The Prometheus and Alertmanager series are matched by name only, never by `job`: every deployment
names those jobs its own way (`prometheus`, `alertmanager-main`, `monitoring/alertmanager`, ...).
Where vmalert evaluates the rules (VictoriaMetrics, the fleet: docs/fleet.md), Prometheus' rule and
notifier series do not exist: vmalert's own have alerts of their own, and its reload flag is one of
the reload alert's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from exporter.bundle.catalog.spec import (
    BASE,
    EXPORTER_JOB,
    AlertSpec,
    Case,
    Scenario,
    ScenarioBuilder,
    ValueKind,
    constant,
    counter,
    selector,
)

if TYPE_CHECKING:  # thresholds.py imports config; the catalog stays data only at run time
    from exporter.bundle.thresholds import Threshold

GROUP = "pgvigil-monitoring"
# Minutes of counter increase the failure alerts look at. Their `for:` is longer (thresholds file), so
# that a one-off (the alert Prometheus drops at start, before it has found the Alertmanagers) passes
# and failures that go on fire.
WINDOW = 5
WATCHDOG_GROUP = "pgvigil-watchdog"
WATCHDOG = "PostgresWatchdog"
WATCHDOG_SEVERITY = "none"  # nobody is paged by it: its heartbeat receiver is

# The labels the test scenarios give to the series of each program of the paging path.
PROMETHEUS = {"job": "prometheus", "instance": "localhost:9090"}
VMALERT = {"job": "monitoring", "instance": "vmalert:8880"}
ALERTMANAGER = {"job": "alertmanager", "instance": "alertmanager:9093"}
EXPORTER = {"job": EXPORTER_JOB, "instance": BASE["instance"]}

# Series these alerts read that Prometheus and Alertmanager expose about themselves, not pgvigil.
FOREIGN_METRICS = frozenset({
    "scrape_duration_seconds", "prometheus_rule_evaluation_failures_total", "prometheus_notifications_errors_total",
    "prometheus_notifications_dropped_total", "prometheus_config_last_reload_successful",
    "alertmanager_notifications_failed_total", "alertmanager_config_last_reload_successful",
    "alertmanager_cluster_members", *(f"vmalert_{kind}_rules_error" for kind in ("alerting", "recording")),
    *(f"vmalert_{kind}_rules_errors_total" for kind in ("alerting", "recording")), "vmalert_alerts_send_errors_total",
    "vmalert_config_last_reload_successful",
})
RELOAD_METRICS = ("prometheus_config_last_reload_successful", "alertmanager_config_last_reload_successful",
                  "pgvigil_config_last_reload_successful", "vmalert_config_last_reload_successful")
# vmalert up to 1.9x says whether each rule's latest evaluation failed (a gauge); later versions count failed
# evaluations: whichever the running vmalert has, by rule group.
VMALERT_RULE_FAILURES = ("sum by (job, instance, group) ("
                         f"increase(vmalert_alerting_rules_errors_total[{WINDOW}m]) "
                         f"or increase(vmalert_recording_rules_errors_total[{WINDOW}m]) "
                         "or vmalert_alerting_rules_error or vmalert_recording_rules_error)")


def _failures(name: str, threshold: str, metric: str, labels: dict[str, str], summary: str,
              description: str) -> AlertSpec:
    """An alert on the increase of a failure counter over WINDOW minutes, by the labels its scenario gives it."""
    def build(case: Case) -> Scenario:
        return Scenario({selector(metric, labels): counter(case.value / WINDOW, case.minutes)}, case.value, labels)

    return AlertSpec(name=name, threshold=threshold, group=GROUP, summary=summary, description=description,
                     value_expr=f"sum by ({', '.join(labels)}) (increase({metric}[{WINDOW}m]))", scenario=build,
                     kind=ValueKind.RATE, window=WINDOW, whole_value=True)


def _level(metric: str, labels: dict[str, str], by: dict[str, str] | None = None,
           shows_value: bool = True) -> ScenarioBuilder:
    """A gauge of `labels` at the value; the alert keeps `by` (all of `labels` by default)."""
    def build(case: Case) -> Scenario:
        series = {selector(metric, labels): constant(case.value, case.minutes)}
        return Scenario(series, case.value if shows_value else None, by or labels)

    return build


_RULE_GROUP = {**PROMETHEUS, "rule_group": "/etc/prometheus/rules/pgvigil-alerts.yml;pgvigil-storage"}
_INTEGRATION = {**ALERTMANAGER, "integration": "pagerduty"}
_TO_ALERTMANAGER = {**PROMETHEUS, "alertmanager": "http://alertmanager:9093/api/v2/alerts"}
_VMALERT_GROUP = {**VMALERT, "group": "pgvigil-storage"}
_FAILING_RULE = {**_VMALERT_GROUP, "alertname": "PostgresDiskFull", "id": "1325846311512744311"}
_VMALERT_TO_ALERTMANAGER = {**VMALERT, "addr": "http://alertmanager-1:9093/api/v2/alerts"}

ALERTS = (
    AlertSpec(
        name="PostgresExporterScrapeSlow",
        threshold="exporter_scrape_duration",
        group=GROUP,
        value_expr=f'avg_over_time(scrape_duration_seconds{{job="{EXPORTER_JOB}"}}[10m])',
        summary="Prometheus' scrapes of pgvigil come close to their timeout",
        description="Scraping pgvigil at {instance} took {value} on average over 10 minutes (alert above {level}); "
                    "a scrape longer than its scrape_timeout fails and leaves every PostgreSQL alert blind.",
        scenario=_level("scrape_duration_seconds", EXPORTER),
    ),
    AlertSpec(
        name="PostgresExporterScrapeOverrun",
        threshold="exporter_scrape_overrun",
        group=GROUP,
        value_expr="pg_exporter_last_scrape_duration_seconds",
        summary="pgvigil's scrapes take longer than the scrape interval",
        description="pgvigil at {instance} took {value} for its latest scrape (alert above {level}, the scrape "
                    "interval): its answers are late or cut short and its data older than it looks.",
        scenario=_level("pg_exporter_last_scrape_duration_seconds", EXPORTER),
    ),
    _failures("PostgresMonitoringRuleEvaluationFailing", "prometheus_rule_failures",
              "prometheus_rule_evaluation_failures_total", _RULE_GROUP,
              "Prometheus fails to evaluate alerting or recording rules",
              "Prometheus {instance} failed {value} rule evaluations of group {rule_group} in 5 minutes "
              "(alert above {level}): the alerts of that group cannot fire."),
    AlertSpec(
        name="PostgresMonitoringVmalertRulesFailing",
        threshold="vmalert_rule_failures",
        group=GROUP,
        value_expr=VMALERT_RULE_FAILURES,
        summary="vmalert fails to evaluate alerting or recording rules",
        description="vmalert {instance} fails to evaluate rules of group {group} ({value}: failing rules, or "
                    "failed evaluations in 5 minutes; alert above {level}): the alerts of that group cannot fire.",
        scenario=_level("vmalert_alerting_rules_error", _FAILING_RULE, _VMALERT_GROUP),
    ),
    _failures("PostgresMonitoringVmalertNotifierFailing", "vmalert_notification_errors",
              "vmalert_alerts_send_errors_total", _VMALERT_TO_ALERTMANAGER,
              "vmalert fails to send alerts to an Alertmanager",
              "vmalert {instance} failed {value} times in 5 minutes to send alerts to {addr} (alert above "
              "{level}): only the other Alertmanagers of the cluster receive them."),
    _failures("PostgresMonitoringAlertmanagerUnreachable", "prometheus_notification_errors",
              "prometheus_notifications_errors_total", _TO_ALERTMANAGER,
              "Prometheus fails to send alerts to an Alertmanager",
              "Prometheus {instance} failed {value} times in 5 minutes to send alerts to {alertmanager} "
              "(alert above {level}): only the other Alertmanagers of the cluster receive them."),
    _failures("PostgresMonitoringAlertsDropped", "prometheus_notifications_dropped",
              "prometheus_notifications_dropped_total", PROMETHEUS,
              "Prometheus drops alerts before any Alertmanager has them",
              "Prometheus {instance} dropped {value} alerts in 5 minutes (alert above {level}): no "
              "Alertmanager accepted them, or its queue was full."),
    _failures("PostgresMonitoringNotificationsFailing", "alertmanager_notification_failures",
              "alertmanager_notifications_failed_total", _INTEGRATION,
              "Alertmanager fails to deliver notifications",
              "Alertmanager {instance} failed {value} {integration} notifications in 5 minutes "
              "(alert above {level}): pages sent through it do not arrive."),
    AlertSpec(
        name="PostgresMonitoringConfigReloadFailed",
        threshold="monitoring_config_reload",
        group=GROUP,
        value_expr="min by (job, instance) ({__name__=~\"%s\"})" % "|".join(RELOAD_METRICS),
        summary="A program of the monitoring path rejected its new configuration",
        description="{job} at {instance} rejected its latest configuration and still runs the previous one: "
                    "the change (rules, routes, targets) is not in effect.",
        scenario=_level("pgvigil_config_last_reload_successful", EXPORTER, shows_value=False),
    ),
    AlertSpec(
        name="PostgresMonitoringAlertmanagerClusterDegraded",
        threshold="alertmanager_cluster_members",
        group=GROUP,
        value_expr="alertmanager_cluster_members",
        summary="The Alertmanager cluster has lost a member",
        description="Alertmanager {instance} sees {value} cluster members (alert below {level}): one more failure "
                    "and no page is sent.",
        scenario=_level("alertmanager_cluster_members", ALERTMANAGER),
    ),
)


def watchdog_rule(runbook_url: str) -> dict:
    """The dead man's switch: always firing, so that its silence at the heartbeat service is the alert."""
    return {
        "alert": WATCHDOG,
        "expr": "vector(1)",
        "labels": {"severity": WATCHDOG_SEVERITY},
        "annotations": {
            "summary": "The alerting path works (this alert always fires)",
            "description": "Always firing while Prometheus evaluates rules and an Alertmanager delivers: it is "
                           "routed to a heartbeat service, which pages when it stops arriving.",
            "runbook_url": runbook_url,
        },
    }


def watchdog_group(runbook_url: str) -> dict:
    return {"name": WATCHDOG_GROUP, "rules": [watchdog_rule(runbook_url)]}


def watchdog_test(runbook_url: str) -> dict:
    """promtool: the watchdog fires with no input at all, from the first evaluation on."""
    rule = watchdog_rule(runbook_url)
    expected = [{"exp_labels": dict(rule["labels"]), "exp_annotations": dict(rule["annotations"])}]
    return {
        "name": f"{WATCHDOG} always fires",
        "interval": "1m",
        "input_series": [],
        "alert_rule_test": [{"eval_time": f"{minute}m", "alertname": WATCHDOG, "exp_alerts": expected}
                            for minute in (0, 60)],
    }


def healthy_series(minutes: int, thresholds: Mapping[str, Threshold]) -> dict[str, str]:
    """A paging path in order (for the no-alert test): quick scrapes, no failures, reloads accepted,
    every Alertmanager in the cluster (as many as the thresholds expect, two at least)."""
    levels = thresholds["alertmanager_cluster_members"].levels().values()
    size = max([2, *(int(level) for level in levels)])
    second = {**ALERTMANAGER, "instance": "alertmanager-2:9093"}
    return {
        selector("scrape_duration_seconds", EXPORTER): constant(0.4, minutes),
        selector("pg_exporter_last_scrape_duration_seconds", EXPORTER): constant(0.35, minutes),
        selector("prometheus_rule_evaluation_failures_total", _RULE_GROUP): constant(0, minutes),
        selector("prometheus_notifications_errors_total", _TO_ALERTMANAGER): constant(0, minutes),
        selector("prometheus_notifications_dropped_total", PROMETHEUS): constant(0, minutes),
        selector("alertmanager_notifications_failed_total", _INTEGRATION): constant(0, minutes),
        selector("prometheus_config_last_reload_successful", PROMETHEUS): constant(1, minutes),
        selector("alertmanager_config_last_reload_successful", ALERTMANAGER): constant(1, minutes),
        selector("pgvigil_config_last_reload_successful", EXPORTER): constant(1, minutes),
        selector("alertmanager_cluster_members", ALERTMANAGER): constant(size, minutes),
        selector("alertmanager_cluster_members", second): constant(size, minutes),
        selector("vmalert_alerting_rules_error", _FAILING_RULE): constant(0, minutes),
        selector("vmalert_alerts_send_errors_total", _VMALERT_TO_ALERTMANAGER): constant(0, minutes),
        selector("vmalert_config_last_reload_successful", VMALERT): constant(1, minutes),
    }
