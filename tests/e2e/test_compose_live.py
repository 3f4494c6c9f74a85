"""`docker compose up`, for real: the stack of docker-compose.yml started, checked and paging.

Docker Hub is out of reach here, so the upstream images are replaced by their Debian-built
equivalents (exporter/dev/offline_images.py, through deploy/offline/images.env: the variables users
have too); pgvigil and PgBouncer build from the Dockerfiles users build. Grafana is left out
explicitly (no Debian package): every other service of the compose file runs. Published ports are
random free ports on 127.0.0.1. The tests run in file order against one stack and end with
`down -v`, which must leave no container, network or volume of the project behind (also done,
unasserted, whatever failed before). The built images stay: they are a cache
(`scripts/offline-images.sh remove` deletes them).

Skipped only where no engine can be started; as root on Linux with apt (CI) a missing engine fails.
Measurements (wall times, image sizes, the restart's gap) are printed at the end (pytest -s shows them)
and written to the file $PGVIGIL_COMPOSE_RESULTS names, if set.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import wait_until

from exporter.dev import docker_engine, offline_images
from exporter.dev.throwaway import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
EXCLUDED = {"grafana"}  # not packaged in Debian; its provisioning is checked by tests/test_compose.py
PORT_MAPPING = re.compile(r"^127\.0\.0\.1:\$\{(PGVIGIL_[A-Z0-9_]*PORT):-\d+\}:\d+$")


def port_variables() -> dict[str, str]:
    """service -> the variable of the port it publishes (tests/test_compose.py: one each, all variables)."""
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    found = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            match = PORT_MAPPING.match(str(port))
            assert match, f"{name}: port {port} is not a PGVIGIL_*_PORT variable on 127.0.0.1"
            found[name] = match.group(1)
    return found


# Each service's secrets volume and what it holds (deploy/secrets/generate.sh), the uid owning it.
OWN_SECRETS = {
    "postgres": ("postgres-secrets", {"postgres_password", "monitor_password"}, 999),
    "pgvigil": ("pgvigil-secrets", {"pgvigil_dsn", "pgbouncer_dsn"}, 10001),
    "demo-workload": ("demo-secrets", {"postgres_dsn"}, 10001),
    "pgbouncer": ("pgbouncer-secrets", {"userlist.txt"}, 10002),
}
HEALTHY_TIMEOUT = 300.0

pytestmark = pytest.mark.timeout(2400)  # a cold image build (debootstrap, apt) takes minutes


@dataclass
class Stack:
    compose: list[str]
    project: str
    env: dict[str, str]
    ports: dict[str, int]
    services: list[str]
    results: dict[str, object] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.compose, "-f", str(COMPOSE_FILE), "-p", self.project, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env, cwd=ROOT)
        if check:
            assert done.returncode == 0, f"compose {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def container(self, service: str) -> str:
        ids = self.run("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def get_json(self, service: str, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.url(service, path) + query, timeout=10) as answer:
            return json.load(answer)

    def prometheus(self, query: str) -> list[dict]:
        return self.get_json("prometheus", "/api/v1/query", query=query)["data"]["result"]

    def project_objects(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": self.docker("ps", "-aq", "--filter", label).stdout.split(),
            "networks": self.docker("network", "ls", "-q", "--filter", label).stdout.split(),
            "volumes": self.docker("volume", "ls", "-q", "--filter", label).stdout.split(),
        }


def health_states(stack: Stack) -> dict[str, str]:
    """service -> healthy / exited(0) / starting / unhealthy / ... for every container of the project."""
    states = {}
    label = f"label=com.docker.compose.project={stack.project}"
    for container in stack.docker("ps", "-aq", "--filter", label).stdout.split():
        inspected = json.loads(stack.docker("inspect", container).stdout)[0]
        service = inspected["Config"]["Labels"]["com.docker.compose.service"]
        state = inspected["State"]
        if state["Status"] == "exited":
            states[service] = f"exited({state['ExitCode']})"
        else:
            states[service] = state.get("Health", {}).get("Status", state["Status"])
    return states


def wait_healthy(stack: Stack, timeout: float) -> None:
    """Every service healthy (secrets-init exited 0); fails early, with the logs, when one cannot be."""
    deadline = time.monotonic() + timeout
    while True:
        states = health_states(stack)
        broken = [s for s, state in states.items()
                  if state == "unhealthy" or state.startswith("exited(") and state != "exited(0)"]
        done = set(states) == set(stack.services) and all(
            state in ("healthy", "exited(0)") for state in states.values())
        if done:
            return
        if broken or time.monotonic() > deadline:
            logs = {s: stack.run("logs", "--tail", "30", s, check=False).stdout[-2000:] for s in broken or states}
            raise AssertionError(f"not every service became healthy within {timeout:.0f}s: {states}\n"
                                 + "\n".join(f"--- {s}:\n{text}" for s, text in logs.items()))
        time.sleep(1)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="pgvigil-dockerd-"))  # its tail is in any failure's message
    try:
        engine = docker_engine.ensure_engine(log_dir / "dockerd.log")
    except docker_engine.EngineUnavailable as exc:
        shutil.rmtree(log_dir)
        if docker_engine.could_install_engine():
            pytest.fail(f"{exc}: scripts/test.sh installs docker.io, docker-compose and debootstrap")
        pytest.skip(str(exc))
    except docker_engine.EngineFailed as exc:
        shutil.rmtree(log_dir)
        pytest.fail(str(exc))
    stack = None
    try:
        compose = docker_engine.compose_command()
        if compose is None:
            pytest.fail("no compose: neither the `docker compose` plugin nor docker-compose is installed")
        results: dict[str, object] = {"compose": " ".join(compose),
                                      "engine_started_by_test": engine.process is not None}
        build_started = time.monotonic()
        images = offline_images.build()
        results["offline_images_seconds"] = round(time.monotonic() - build_started, 1)
        results["offline_images_built"] = [image.name for image in images if image.built]
        variables = port_variables()
        ports = {service: free_port() for service in variables}
        env = dict(os.environ, **offline_images.read_env_file(),
                   **{variables[service]: str(port) for service, port in ports.items()})
        env.pop("COMPOSE_FILE", None)
        env.pop("COMPOSE_PROJECT_NAME", None)
        project = f"pgvigil-e2e-{uuid.uuid4().hex[:8]}"
        probe = Stack(compose, project, env, ports, [])
        services = [s for s in probe.run("config", "--services").stdout.split() if s not in EXCLUDED]
        stack = Stack(compose, project, env, ports, services, results)
        up_started = time.monotonic()
        stack.run("up", "-d", "--build", *services, timeout=1200)
        wait_healthy(stack, HEALTHY_TIMEOUT)
        results["up_to_healthy_seconds"] = round(time.monotonic() - up_started, 1)
        results["image_sizes_mb"] = image_sizes(stack)
        yield stack
    finally:
        if stack is not None:
            stack.run("down", "-v", "--remove-orphans", check=False)  # the last test asserted it; here: always
            stack.results["total_wall_seconds"] = round(time.monotonic() - started, 1)
            if os.environ.get("PGVIGIL_COMPOSE_RESULTS"):
                Path(os.environ["PGVIGIL_COMPOSE_RESULTS"]).write_text(json.dumps(stack.results, indent=2) + "\n")
            print(f"\ncompose live measurements: {json.dumps(stack.results)}")
        engine.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


def image_sizes(stack: Stack) -> dict[str, int]:
    sizes = {}
    for service in stack.services:
        image = json.loads(stack.docker("inspect", stack.container(service)).stdout)[0]["Config"]["Image"]
        size = stack.docker("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
        sizes[image] = round(int(size) / 1e6)
    return sizes


def test_every_service_but_grafana_runs_healthy(stack):
    assert "grafana" not in stack.services
    assert {"secrets-init", "postgres", "pgvigil", "pgbouncer", "prometheus", "alertmanager", "alert-log"} <= set(
        stack.services)
    states = health_states(stack)
    assert states["secrets-init"] == "exited(0)"
    assert all(state == "healthy" for service, state in states.items() if service != "secrets-init"), states


def test_published_ports_listen_on_loopback_only(stack):
    assert {"pgvigil", "pgbouncer", "prometheus", "alertmanager"} <= set(stack.ports)
    for service in set(stack.ports) & set(stack.services):
        bindings = json.loads(stack.docker("inspect", stack.container(service)).stdout)[0]["NetworkSettings"]["Ports"]
        published = [binding for bound in bindings.values() if bound for binding in bound]
        assert published and all(b["HostIp"] == "127.0.0.1" for b in published), (service, published)
        assert {int(b["HostPort"]) for b in published} == {stack.ports[service]}


def test_pgvigil_answers_metrics_and_health_through_the_published_port(stack):
    health = stack.get_json("pgvigil", "/health")
    assert health["status"] == "ok"
    assert {name: target["up"] for name, target in health["targets"].items()} == {"app": True, "pgbouncer": True}
    with urllib.request.urlopen(stack.url("pgvigil", "/metrics"), timeout=10) as answer:
        text = answer.read().decode()
    assert 'pg_up{target="app",env="compose"} 1.0' in text
    assert 'pgbouncer_up{target="pgbouncer",env="compose"} 1.0' in text
    assert "pg_stat_statements" in text or "pg_statements_" in text  # the preloaded extension is read


def test_prometheus_scrapes_pgvigil_and_pgbouncer_with_every_target_up(stack):
    def every_target_up() -> list[dict] | None:
        targets = stack.get_json("prometheus", "/api/v1/targets")["data"]["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_until(every_target_up, 60, "every Prometheus target up")
    assert {t["labels"]["job"] for t in targets} == {"pgvigil", "prometheus", "alertmanager"}
    assert len([t for t in targets if t["labels"]["job"] == "alertmanager"]) == 2  # the pair, both up
    assert wait_until(lambda: stack.prometheus('pg_up{target="app"} == 1'), 60, "pg_up of app in Prometheus")
    assert wait_until(lambda: stack.prometheus('pgbouncer_up{target="pgbouncer"} == 1'), 60,
                      "pgbouncer_up in Prometheus")


def test_the_shipped_rule_files_are_loaded_and_evaluate(stack):
    def evaluated() -> list[dict] | None:
        groups = stack.get_json("prometheus", "/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return groups if rules and all(rule["health"] == "ok" for rule in rules) else None

    groups = wait_until(evaluated, 90, "every rule evaluated without error")
    assert {Path(group["file"]).name for group in groups} == {
        "pgvigil-rules.yml", "pgvigil-alerts.yml", "pgvigil-slos.yml"}
    alerts = {rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"}
    assert {"PostgresDown", "PostgresExporterDown", "PostgresPgBouncerDown"} <= alerts


def test_each_service_reads_only_its_own_secrets(stack):
    for service, (volume, files, uid) in OWN_SECRETS.items():
        container = stack.container(service)
        mounts = json.loads(stack.docker("inspect", container).stdout)[0]["Mounts"]
        volumes = {m["Name"].removeprefix(f"{stack.project}_") for m in mounts
                   if m["Type"] == "volume" and m["Destination"] == "/run/secrets"}
        assert volumes == {volume}, (service, mounts)
        listing = stack.docker("exec", container, "sh", "-c", "stat -c '%n %u %a' /run/secrets/*").stdout.split("\n")
        seen = {line.split()[0].rsplit("/", 1)[1]: line.split()[1:] for line in listing if line}
        assert set(seen) == files, service
        assert all(owner_mode == [str(uid), "400"] for owner_mode in seen.values()), (service, seen)
    # From inside pgvigil's container, as the user it runs as: the superuser's password is nowhere.
    pgvigil = stack.container("pgvigil")
    denied = stack.docker("exec", pgvigil, "sh", "-c", "cat /run/secrets/postgres_password; id -u")
    assert "No such file" in denied.stderr
    assert denied.stdout.split() == ["10001"]
    own = stack.docker("exec", pgvigil, "cat", "/run/secrets/pgvigil_dsn")
    assert own.returncode == 0 and own.stdout.startswith("postgresql://pgvigil:")
    alert_log = stack.docker("exec", stack.container("alert-log"), "ls", "-A", "/run/secrets")
    assert alert_log.returncode != 0 or not alert_log.stdout.strip()  # no secrets at all


def samples(stack: Stack, selector: str, seconds: int) -> list[tuple[float, float]]:
    result = stack.prometheus(f"{selector}[{seconds}s]")
    assert len(result) == 1, result
    return [(float(t), float(v)) for t, v in result[0]["values"]]


def test_a_restart_of_pgvigil_loses_nothing_but_the_gap(stack):
    interval = 15.0  # deploy/prometheus/prometheus.yml's scrape_interval
    before_names = {r["metric"]["__name__"] for r in stack.prometheus('count by (__name__) ({job="pgvigil"})')}
    before_series = {json.dumps(r["metric"], sort_keys=True) for r in stack.prometheus('{job="pgvigil"}')}
    restarted_at = time.time()
    stack.run("restart", "pgvigil", timeout=120)
    wait_until(lambda: health_states(stack).get("pgvigil") == "healthy", 120, "pgvigil healthy after its restart")
    # Two scrapes of the new process, so a late series has had its chance.
    wait_until(lambda: sum(1 for t, v in samples(stack, 'pg_up{target="app"}', 300) if t > restarted_at) >= 2,
               4 * interval + 30, "two scrapes after the restart")
    points = samples(stack, 'pg_up{target="app"}', 600)
    assert all(value == 1.0 for _, value in points)
    gaps = [later - earlier for (earlier, _), (later, _) in zip(points, points[1:])]
    gap = max(gaps)
    after_names = {r["metric"]["__name__"] for r in stack.prometheus('count by (__name__) ({job="pgvigil"})')}
    after_series = {json.dumps(r["metric"], sort_keys=True) for r in stack.prometheus('{job="pgvigil"}')}
    up_points = samples(stack, 'up{job="pgvigil"}', 600)
    stack.results["restart"] = {
        "largest_gap_between_pg_up_samples_seconds": round(gap, 1),
        "scrape_interval_seconds": interval,
        "failed_scrapes_during_restart": sum(1 for _, v in up_points if v == 0.0),
        "metric_names_before": len(before_names), "metric_names_lost": sorted(before_names - after_names),
        "series_before": len(before_series), "series_after": len(after_series),
        "series_lost": len(before_series - after_series),  # the demo's come and go: which, below
        "series_lost_metrics": sorted({json.loads(series)["__name__"] for series in before_series - after_series}),
    }
    # The restart costs at most one missed scrape on each side of it; every metric comes back.
    assert gap <= 3 * interval, stack.results["restart"]
    assert before_names <= after_names, stack.results["restart"]


def test_a_stopped_postgres_pages_through_alertmanager_to_the_alert_log(stack):
    stopped_at = time.monotonic()
    stack.run("stop", "postgres", timeout=120)
    alert_log = stack.container("alert-log")

    def delivered() -> str | None:
        logs = stack.docker("logs", alert_log).stdout
        lines = [line for line in logs.splitlines() if "[firing] PostgresDown" in line]
        return lines[0] if lines else None

    # pg_up < 1 for 1m, plus a scrape and an evaluation (15s each), plus Alertmanager's group_wait 30s.
    line = wait_until(delivered, 300, "PostgresDown in alert-log's output")
    assert line.startswith("database-critical: [firing] PostgresDown severity=critical target=app")
    alerts = stack.get_json("alertmanager", "/api/v2/alerts")
    assert any(a["labels"]["alertname"] == "PostgresDown" and a["status"]["state"] == "active" for a in alerts)
    stack.results["postgres_stopped_to_page_seconds"] = round(time.monotonic() - stopped_at, 1)


def test_down_leaves_no_container_network_or_volume(stack):
    assert any(stack.project_objects().values())
    stack.run("down", "-v", "--remove-orphans", timeout=300)
    assert stack.project_objects() == {"containers": [], "networks": [], "volumes": []}
