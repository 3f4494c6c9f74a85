"""The Alertmanager pair for the Prometheus Operator (`deploy/kubernetes/alertmanager.yaml`).

The k8s output targets the Prometheus Operator (PrometheusRule, ServiceMonitor, ...), so the pair is
the operator's own `Alertmanager` resource with `replicas: 2`: the operator runs it as a StatefulSet,
creates the headless Service `alertmanager-operated` (web 9093, gossip 9094 TCP and UDP) and gives
each pod `--cluster.peer` flags for the others. A Prometheus pointed at that Service
(`alerting.alertmanagers: [{name: alertmanager-operated, port: web}]`) discovers its endpoints and
sends every alert to both pods, never to one behind a load balancer (docs/paging.md).

The config is the shipped one (`alertmanager.production_config`) in the Secret the resource names.
It holds no secret: the receivers read theirs from files, which the operator mounts from the Secret
listed in `secrets:` (created by the user, never generated) under /etc/alertmanager/secrets/<name>/.
"""
from __future__ import annotations

from exporter.bundle import alertmanager

NAME = "pgvigil"
CONFIG_SECRET = f"alertmanager-{NAME}"  # the operator's default name for the config of Alertmanager `pgvigil`
RECEIVER_SECRET = f"{NAME}-alertmanager-receivers"  # slack_api_url, smtp_password, pagerduty_routing_key, heartbeat_url
RECEIVER_SECRET_DIR = f"/etc/alertmanager/secrets/{RECEIVER_SECRET}"  # where the operator mounts it
LABELS = {"app.kubernetes.io/name": NAME}  # the label the other manifests carry, for the operator's selectors
POD_LABELS = {"alertmanager": NAME}  # what the operator puts on the pods of Alertmanager `pgvigil`
REPLICAS = 2


def config_text() -> str:
    """The shipped Alertmanager config with its secret files where the operator mounts them."""
    text = alertmanager.render(alertmanager.production_config())
    return text.replace(alertmanager.SECRETS_DIR, RECEIVER_SECRET_DIR)


def alertmanager_resource() -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Alertmanager",
        "metadata": {"name": NAME, "labels": dict(LABELS)},
        "spec": {
            "replicas": REPLICAS,  # a cluster of two: either one alone keeps paging
            "configSecret": CONFIG_SECRET,
            "secrets": [RECEIVER_SECRET],
            # the two replicas on two nodes where there are two: one node lost must not take both
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": dict(POD_LABELS)}},
            }]}},
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        },
    }


def config_secret() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CONFIG_SECRET, "labels": dict(LABELS)},
        "type": "Opaque",
        "stringData": {"alertmanager.yaml": config_text()},
    }


def service_monitor() -> dict:
    """Scrapes both replicas through the operator's headless Service: the PostgresMonitoring* alerts read
    alertmanager_cluster_members and alertmanager_notifications_failed_total."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": f"{NAME}-alertmanager", "labels": dict(LABELS)},
        "spec": {
            "selector": {"matchLabels": {"operated-alertmanager": "true"}},
            "endpoints": [{"port": "web", "path": "/metrics", "interval": "30s"}],
        },
    }


def manifests() -> list[dict]:
    return [alertmanager_resource(), config_secret(), service_monitor()]
