"""The docker-compose stack, checked without Docker: schema, mounted paths, wiring, secrets, Dockerfile.

The parts that can run here do run: the secrets script, the PostgreSQL init script against a real
server, pgvigil with the stack's config as the role that script creates, promtool on the stack's
Prometheus config and amtool on its Alertmanager config.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from exporter.bundle.alertmanager import webhook_config
from exporter.config import parse_config
from exporter.scrape.assembly import scrape_once
from exporter.dev.throwaway import ThrowawayCluster

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
SECRETS_MOUNT = "/run/pgvigil-secrets"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts (short syntax, relative paths)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def repo_path_for(compose: dict, service: str, container_path: str) -> Path:
    """The repository file a service sees at `container_path`, through its bind mounts."""
    for source, target in bind_mounts(compose["services"][service]):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return ROOT / source / container_path[len(target):].lstrip("/")
    raise AssertionError(f"{service} does not mount anything at {container_path}")


def test_compose_file_matches_the_compose_specification(compose):
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)  # the draft its $schema names
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_stack_has_every_service(compose):
    assert {"postgres", "pgvigil", "prometheus", "alertmanager", "grafana"} <= set(compose["services"])


def test_every_mounted_path_exists(compose):
    for name, service in compose["services"].items():
        for source, _ in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert (context / "Dockerfile").is_file()


def test_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_long_running_services_have_healthchecks(compose):
    for name, service in compose["services"].items():
        if service.get("restart") != "no":
            assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"


def test_no_secret_in_the_compose_file(compose):
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key):
                assert key.endswith("FILE") and str(value).startswith(SECRETS_MOUNT), \
                    f"{name}: {key} must come from a file in the generated secrets volume"
    assert "POSTGRES_HOST_AUTH_METHOD" not in COMPOSE_FILE.read_text()


def test_ports_listen_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_postgres_preloads_pg_stat_statements_and_runs_the_init_script(compose):
    postgres = compose["services"]["postgres"]
    assert "shared_preload_libraries=pg_stat_statements" in postgres["command"]
    init_dir = repo_path_for(compose, "postgres", "/docker-entrypoint-initdb.d")
    scripts = sorted(init_dir.glob("*.sh"))
    assert scripts and all(os.access(script, os.X_OK) for script in scripts)


def test_prometheus_scrapes_pgvigil_and_loads_the_shipped_rules(compose, tmp_path):
    config_path = repo_path_for(compose, "prometheus", "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text())
    pgvigil_listen = yaml.safe_load(repo_path_for(compose, "pgvigil", "/etc/pgvigil/pgvigil.yaml").read_text())["listen"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["pgvigil"]["static_configs"][0]["targets"] == [f"pgvigil:{pgvigil_listen.rsplit(':', 1)[1]}"]
    rule_files = [repo_path_for(compose, "prometheus", path) for path in config["rule_files"]]
    assert {path.name for path in rule_files} == {"pgvigil-rules.yml", "pgvigil-alerts.yml"}
    assert all(path.is_file() for path in rule_files)
    if shutil.which("promtool"):
        local = dict(config, rule_files=[str(path) for path in rule_files])
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(local))
        checked = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alertmanager_uses_the_shipped_routes_with_a_webhook(compose):
    path = repo_path_for(compose, "alertmanager", "/etc/alertmanager/alertmanager.yml")
    assert yaml.safe_load(path.read_text()) == webhook_config("http://alert-log:8080", "30s", "5m")
    assert "alert-log" in compose["services"]
    amtool = shutil.which("amtool")
    if amtool:
        checked = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_provisioning_points_at_the_stack(compose):
    datasources = yaml.safe_load(repo_path_for(
        compose, "grafana", "/etc/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    scrape_interval = yaml.safe_load(repo_path_for(
        compose, "prometheus", "/etc/prometheus/prometheus.yml").read_text())["global"]["scrape_interval"]
    assert datasources[0]["jsonData"]["timeInterval"] == scrape_interval
    providers = yaml.safe_load(repo_path_for(
        compose, "grafana", "/etc/grafana/provisioning/dashboards/pgvigil.yml").read_text())["providers"]
    folder = repo_path_for(compose, "grafana", providers[0]["options"]["path"])
    assert folder.resolve() == (ROOT / "dashboards").resolve() and len(list(folder.glob("*.json"))) == 7
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert repo_path_for(compose, "grafana", home).is_file()


def install_commands(text: str) -> list[list[str]]:
    """`pip install` commands (words, options dropped) in shell code blocks / RUN lines of `text`."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|;", line.split("#")[0]):
            words = shlex.split(part.replace("RUN ", "", 1)) if "pip install" in part else []
            if words[:2] == ["pip", "install"]:
                found.append([w for w in words[2:] if not w.startswith("-")])
    return found


def test_the_dockerfile_installs_the_way_the_readme_says():
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert ["."] in install_commands(readme), "the README no longer says `pip install .`"
    assert install_commands(dockerfile) == [["."]], "the Dockerfile must run the README's `pip install .`"
    copied = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    sources = {source for group in copied for source in group}
    assert {"pyproject.toml", "README.md", "exporter"} <= sources, "pip install . needs these in the image"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not sources & ignored, f".dockerignore hides {sources & ignored} from the build"
    for source in sources:
        assert (ROOT / source).exists()


def start_demo_workload(compose: dict, secrets: Path) -> subprocess.Popen:
    """The demo-workload service's entrypoint, run here with the secrets directory swapped in."""
    argv = [sys.executable if word == "python" else word.replace(SECRETS_MOUNT, str(secrets))
            for word in compose["services"]["demo-workload"]["entrypoint"]]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # the table appears only once the workload has loaded the schema
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def test_secrets_script_makes_passwords_once(tmp_path):
    script = ROOT / "deploy" / "secrets" / "generate.sh"
    env = dict(os.environ, SECRETS_DIR=str(tmp_path))
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
    first = {p.name: p.read_text() for p in tmp_path.iterdir()}
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == first, "a restart must not change passwords"
    assert re.fullmatch(r"[A-Za-z0-9]{32}", first["monitor_password"])
    assert first["pgvigil_dsn"].strip() == f"postgresql://pgvigil:{first['monitor_password']}@postgres:5432/app"


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_init_script_role_runs_the_stack_config(compose, tmp_path):
    """The role the init script creates can run every shipped query with the stack's pgvigil config."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    subprocess.run(["sh", str(ROOT / "deploy/secrets/generate.sh")], env=dict(os.environ, SECRETS_DIR=str(secrets)),
                   check=True, capture_output=True)
    compose_db = compose["services"]["postgres"]["environment"]["POSTGRES_DB"]
    with ThrowawayCluster() as pg:
        pg.create_database(compose_db)
        for script in sorted(repo_path_for(compose, "postgres", "/docker-entrypoint-initdb.d").glob("*.sh")):
            env = dict(os.environ, POSTGRES_USER="postgres", POSTGRES_DB=compose_db, PGHOST="127.0.0.1",
                       PGPORT=str(pg.port), PGVIGIL_SECRETS=str(secrets))
            ran = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
            assert ran.returncode == 0, ran.stderr
        assert pg.execute("SELECT pg_has_role('pgvigil', 'pg_monitor', 'MEMBER'), rolsuper FROM pg_roles "
                          "WHERE rolname = 'pgvigil'") == [(True, False)]
        # The stack's DSN files, pointing at this server instead of the compose network. The trust
        # authentication of the throwaway cluster ignores the passwords; the usernames still count.
        for name in ("pgvigil_dsn", "postgres_dsn"):
            dsn = (secrets / name).read_text().replace("@postgres:5432/", f"@127.0.0.1:{pg.port}/")
            (secrets / name).write_text(dsn)
        workload = start_demo_workload(compose, secrets)
        try:
            wait_until(lambda: pg.execute("SELECT count(*) FROM orders WHERE id > 20000", compose_db)[0][0] > 0)
            config_text = repo_path_for(compose, "pgvigil", "/etc/pgvigil/pgvigil.yaml").read_text()
            config = parse_config(config_text.replace(SECRETS_MOUNT, str(secrets)), "deploy/pgvigil/pgvigil.yaml")
            text = scrape_once(config)
        finally:
            workload.send_signal(signal.SIGTERM)
            assert workload.wait(timeout=30) == 0, workload.stderr.read()
    assert 'pg_stat_user_tables_n_live_tup{target="app",env="compose",datname="app",schemaname="public",' \
           'relname="customers"}' in text
    assert 'pg_up{target="app",env="compose"} 1' in text
    failed = [line for line in text.splitlines() if line.startswith("pgvigil_query_success") and line.endswith(" 0")]
    assert not failed, "queries failing as the monitoring role:\n" + "\n".join(failed)
    assert (secrets / "monitor_password").read_text() not in text
