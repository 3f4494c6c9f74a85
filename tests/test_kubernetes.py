"""Kubernetes manifests (`pgvigil bundle --kubernetes DIR`): the committed deploy/kubernetes/ is the
generator's output, every manifest has the fields its kind requires (structural checks: no package here
ships the Kubernetes or prometheus-operator OpenAPI schemas), and the PrometheusRule's rules, written
out as a plain rule file, pass `promtool check rules` and the same unit tests as alerts/tests/.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from exporter.bundle import ALERT_FILES, load_inputs
from exporter.bundle.kubernetes import FILES, add_grouping_label, render
from exporter.cli import main
from exporter.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
needs_promtool = pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed "
                                    "(scripts/test.sh installs it)")

# kind -> dotted paths every manifest of that kind must have (what the API server or the operator rejects
# a manifest without, plus what makes it do anything at all)
REQUIRED = {
    "PrometheusRule": ["spec.groups"],
    "ServiceMonitor": ["spec.selector.matchLabels", "spec.endpoints"],
    "PodMonitor": ["spec.selector.matchLabels", "spec.podMetricsEndpoints"],
    "ConfigMap": ["data"],
    "Deployment": ["spec.selector.matchLabels", "spec.template.metadata.labels", "spec.template.spec.containers"],
    "Service": ["spec.selector", "spec.ports"],
    "ScrapeConfig": ["spec.jobName", "spec.httpSDConfigs"],
}
API_VERSION = {"PrometheusRule": "monitoring.coreos.com/v1", "ServiceMonitor": "monitoring.coreos.com/v1",
               "PodMonitor": "monitoring.coreos.com/v1", "ConfigMap": "v1", "Deployment": "apps/v1",
               "Service": "v1", "ScrapeConfig": "monitoring.coreos.com/v1alpha1"}


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def documents() -> dict[str, dict]:
    """kind -> the committed manifest of that kind (each kind appears once)."""
    found: dict[str, dict] = {}
    for name in FILES:
        if name == "alertmanager.yaml":  # the Alertmanager pair has a ServiceMonitor of its own: pair_documents()
            continue
        for document in yaml.safe_load_all((DEPLOY / name).read_text()):
            assert document["kind"] not in found, f"{name}: a second {document['kind']}"
            found[document["kind"]] = document
    return found


def dig(document: dict, path: str) -> object:
    value: object = document
    for key in path.split("."):
        assert isinstance(value, dict) and key in value, f"{document['kind']}: {path} is missing"
        value = value[key]
    return value


def test_committed_manifests_are_the_generator_output():
    rendered = render(load_inputs(None, None))
    assert sorted(rendered) == sorted(FILES)
    stale = [name for name, text in rendered.items() if (DEPLOY / name).read_text() != text]
    assert not stale, f"regenerate with `pgvigil bundle --kubernetes deploy/kubernetes`: {', '.join(stale)} differ"


def test_prometheus_rule_holds_exactly_the_groups_of_the_rule_files():
    expected = []
    for key in ("rules", "alerts", "slos"):
        expected += yaml.safe_load((ROOT / ALERT_FILES[key]).read_text())["groups"]
    assert documents()["PrometheusRule"]["spec"]["groups"] == expected


def test_every_manifest_has_the_fields_its_kind_requires():
    found = documents()
    assert sorted(found) == sorted(REQUIRED)
    for kind, document in found.items():
        assert document["apiVersion"] == API_VERSION[kind]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", dig(document, "metadata.name"))  # type: ignore[arg-type]
        for path in REQUIRED[kind]:
            assert dig(document, path), f"{kind}: {path} is empty"


def test_manifests_fit_together():
    found = documents()
    deployment, service = found["Deployment"], found["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the Deployment's selector must match its own pods"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert found["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert found["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port_names = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    assert {e["port"] for e in found["ServiceMonitor"]["spec"]["endpoints"]} == {"metrics"}
    assert {p["name"] for p in service["spec"]["ports"]} == {"metrics"}
    assert {e["port"] for e in found["PodMonitor"]["spec"]["podMetricsEndpoints"]} <= port_names
    assert container["args"] == ["serve", "--config", "/etc/pgvigil/pgvigil.yaml", "--listen", "0.0.0.0:9187"]
    # with --web-config (TLS, basic auth) an httpGet probe fails: the probes only open the port
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "metrics"}

    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert {mount["name"] for mount in container["volumeMounts"]} == set(volumes)
    assert volumes["config"]["configMap"]["name"] == found["ConfigMap"]["metadata"]["name"]
    assert "secretName" in volumes["dsn"]["secret"]  # the DSN comes from a Secret the user creates, never a manifest


def _operator_job(monitor: dict, target_labels: dict, namespace: str = "monitoring") -> str:
    """The `job` label the Prometheus Operator gives what a monitor scrapes (its documented defaults)."""
    spec, name = monitor["spec"], monitor["metadata"]["name"]
    if monitor["kind"] == "ScrapeConfig":
        return spec.get("jobName") or f"scrapeConfig/{namespace}/{name}"
    job_label = spec.get("jobLabel")
    if job_label and job_label in target_labels:
        return target_labels[job_label]
    return target_labels["__service_name"] if monitor["kind"] == "ServiceMonitor" else f"{namespace}/{name}"


def test_every_monitor_yields_the_job_the_rules_select_on():
    """PostgresExporterDown is up{job="pgvigil"}: a PodMonitor without jobLabel would make the job
    monitoring/pgvigil, and the alert could never fire."""
    found = documents()
    jobs = set(re.findall(r'up\{job="([^"]+)"\}', yaml.safe_dump(found["PrometheusRule"])))
    assert jobs == {"pgvigil"}
    pod_labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service_labels = {**found["Service"]["metadata"]["labels"], "__service_name": found["Service"]["metadata"]["name"]}
    assert _operator_job(found["PodMonitor"], pod_labels) == "pgvigil"
    assert _operator_job(found["ServiceMonitor"], service_labels) == "pgvigil"
    assert _operator_job(found["ScrapeConfig"], {}) == "pgvigil"


def test_config_map_holds_a_valid_config(tmp_path):
    text = documents()["ConfigMap"]["data"]["pgvigil.yaml"]
    secret = "/run/secrets/pgvigil/dsn"  # where the Deployment mounts the Secret's `dsn` key
    assert f"dsn_file: {secret}\n" in text
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("postgresql://monitor@db:5432/app\n")
    path = tmp_path / "pgvigil.yaml"
    path.write_text(text.replace(secret, str(dsn_file)))
    config = load_config(str(path))
    assert [target.dsn for target in config.targets] == ["postgresql://monitor@db:5432/app"]


def _rule_file(directory: Path, prometheus_rule_text: str) -> Path:
    groups = yaml.safe_load(prometheus_rule_text)["spec"]["groups"]
    path = directory / "extracted-rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@needs_promtool
def test_promtool_accepts_the_prometheus_rule_and_its_unit_tests_pass(tmp_path):
    rule_file = _rule_file(tmp_path, (DEPLOY / "prometheusrule.yaml").read_text())
    checked = run("promtool", "check", "rules", str(rule_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = sorted((ROOT / "alerts" / "tests").glob("*.test.yml"))
    assert tests
    for test_file in tests:
        tested = _unit_test(test_file, rule_file)
        assert tested.returncode == 0, f"{test_file.name}:\n{tested.stdout}{tested.stderr}"


def _unit_test(test_file: Path, rule_file: Path) -> subprocess.CompletedProcess:
    """promtool's run of `test_file` with its rule_files replaced by `rule_file` (same directory)."""
    document = yaml.safe_load(test_file.read_text())
    document["rule_files"] = [rule_file.name]  # the same tests, against the PrometheusRule's rules only
    copy = rule_file.parent / test_file.name
    copy.write_text(yaml.safe_dump(document, sort_keys=False))
    return run("promtool", "test", "rules", copy.name, cwd=rule_file.parent)


@needs_promtool
def test_cluster_label_joins_every_by_and_on(tmp_path):
    result = CliRunner().invoke(main, ["bundle", "--kubernetes", str(tmp_path / "k8s"), "--cluster-label", "cluster"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "k8s" / "prometheusrule.yaml").read_text()
    lists = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", text)
    assert len(lists) >= 3 and all("cluster" in names.split(", ") for names in lists), lists
    assert "--cluster-label cluster" in text.splitlines()[0]
    rule_file = _rule_file(tmp_path, text)
    checked = run("promtool", "check", "rules", str(rule_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the alerts' scenarios give every series cluster="main": the joined PgBouncer alerts still fire
    tested = _unit_test(ROOT / ALERT_FILES["tests"], rule_file)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # only the rules change
    for name in FILES[1:]:
        assert (tmp_path / "k8s" / name).read_text().splitlines()[2:] == (DEPLOY / name).read_text().splitlines()[2:]


def test_add_grouping_label_keeps_a_present_label_and_leaves_without_alone():
    expr = "sum by (job, cluster) (x) / on(job) group_left() sum without(datname) (y)"
    assert add_grouping_label(expr, "cluster") == (
        "sum by (job, cluster) (x) / on (job, cluster) group_left() sum without(datname) (y)")


@pytest.mark.parametrize("argv, message", [
    (["--cluster-label", "cluster"], "give --kubernetes DIR"),
    (["--kubernetes", "k8s", "--out", "x"], "drop --out"),
])
def test_option_misuse_is_a_usage_error(tmp_path, argv, message):
    result = CliRunner().invoke(main, ["bundle", *argv])
    assert result.exit_code == 2 and message in result.output, result.output


def test_bad_cluster_label_is_named(tmp_path):
    result = CliRunner().invoke(main, ["bundle", "--kubernetes", str(tmp_path / "k8s"), "--cluster-label", "9x"])
    assert result.exit_code == 1
    assert "--cluster-label '9x': expected a Prometheus label name" in result.output
    assert not (tmp_path / "k8s").exists()


def pair_documents() -> dict[str, dict]:
    return {document["kind"]: document for document in yaml.safe_load_all((DEPLOY / "alertmanager.yaml").read_text())}


def test_the_alertmanager_pair_is_the_operators_resource_with_two_replicas_and_the_shipped_routes():
    from exporter.bundle import alertmanager
    from exporter.bundle.alertmanager_pair import RECEIVER_SECRET, RECEIVER_SECRET_DIR

    found = pair_documents()
    assert sorted(found) == ["Alertmanager", "Secret", "ServiceMonitor"]
    resource, secret, monitor = found["Alertmanager"], found["Secret"], found["ServiceMonitor"]
    assert resource["apiVersion"] == "monitoring.coreos.com/v1" and resource["spec"]["replicas"] == 2
    # the config Secret is generated (it holds no secret); the receivers' Secret is the user's, only named
    assert resource["spec"]["configSecret"] == secret["metadata"]["name"]
    assert resource["spec"]["secrets"] == [RECEIVER_SECRET]
    config = yaml.safe_load(secret["stringData"]["alertmanager.yaml"])
    shipped = yaml.safe_load((ROOT / ALERT_FILES["alertmanager"]).read_text())
    assert yaml.safe_dump(config) == yaml.safe_dump(shipped).replace(alertmanager.SECRETS_DIR, RECEIVER_SECRET_DIR)
    assert config["route"]["routes"][0]["receiver"] == "heartbeat"
    # scraped through the operator's headless Service, which has a `web` port on every replica
    assert monitor["spec"]["selector"]["matchLabels"] == {"operated-alertmanager": "true"}
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["web"]
    terms = resource["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == {"alertmanager": resource["metadata"]["name"]}
