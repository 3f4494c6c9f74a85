"""The docker-compose stack, checked without Docker: schema, mounted paths, wiring, secrets, Dockerfile.

The parts that can run here do run: the secrets script, the PostgreSQL init script against a real
server, pgvigil with the stack's config as the role that script creates, the demo workload's
entrypoint, pgvigil's healthcheck against pgvigil in plain, TLS and basic-auth modes, promtool on
the stack's Prometheus config and amtool on its Alertmanager config.
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
import tempfile
import time
from pathlib import Path

import jsonschema
import psycopg
import pytest
import yaml

from exporter.bundle.alertmanager import webhook_config
from exporter.bundle.dashboards import build_dashboards
from exporter.bundle.thresholds import load_thresholds
from exporter.config import parse_config
from exporter.dev.pgbouncer import pgbouncer_binary
from exporter.dev.throwaway import ThrowawayCluster, free_port
from exporter.scrape.assembly import scrape_once

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
SECRETS_MOUNT = "/run/secrets"
# What each service may read: its own secrets volume and nothing else (generate.sh writes them).
OWN_SECRETS = {
    "postgres": ("postgres-secrets", "postgres", {"postgres_password", "monitor_password"}),
    "pgvigil": ("pgvigil-secrets", "pgvigil", {"pgvigil_dsn", "pgbouncer_dsn"}),
    "demo-workload": ("demo-secrets", "demo", {"postgres_dsn"}),
    "grafana": ("grafana-secrets", "grafana", {"grafana_admin_password"}),
    "pgbouncer": ("pgbouncer-secrets", "pgbouncer", {"userlist.txt"}),
}


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
    pgvigil_config_path = repo_path_for(compose, "pgvigil", "/etc/pgvigil/pgvigil.yaml")
    pgvigil_listen = yaml.safe_load(pgvigil_config_path.read_text())["listen"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["pgvigil"]["static_configs"][0]["targets"] == [f"pgvigil:{pgvigil_listen.rsplit(':', 1)[1]}"]
    rule_files = [repo_path_for(compose, "prometheus", path) for path in config["rule_files"]]
    assert {path.name for path in rule_files} == {"pgvigil-rules.yml", "pgvigil-alerts.yml", "pgvigil-slos.yml"}
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
    assert folder.resolve() == (ROOT / "dashboards").resolve()
    # every dashboard the bundle generates (the objectives' too) is provisioned
    assert {path.name for path in folder.glob("*.json")} == set(build_dashboards(load_thresholds()))
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
    for source in sources:
        hidden = [rule for rule in ignored if source == rule or source.startswith(rule + "/")]
        assert not hidden or f"!{source}" in ignored, f".dockerignore hides {source} from the build ({hidden})"
    for source in sources:
        assert (ROOT / source).exists()


def secrets_volumes(service: dict) -> dict[str, str]:
    """Named volumes ending in -secrets that the service mounts: {volume: container path}."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.endswith("-secrets"):
            found[source] = target
    return found


def test_each_service_mounts_only_its_own_secrets(compose):
    init = compose["services"]["secrets-init"]
    written = secrets_volumes(init)
    for name, service in compose["services"].items():
        if name == "secrets-init":
            continue
        mounted = secrets_volumes(service)
        if name not in OWN_SECRETS:
            assert not mounted, f"{name} mounts secrets it does not use: {mounted}"
            continue
        volume, subdir, _ = OWN_SECRETS[name]
        assert mounted == {volume: SECRETS_MOUNT}, f"{name} must mount {volume} alone, read-only"
        assert f"{volume}:{SECRETS_MOUNT}:ro" in service["volumes"]
        assert written[volume] == f"/secrets/{subdir}", "secrets-init writes that volume's files"
    assert set(written) == {volume for volume, _, _ in OWN_SECRETS.values()}


def test_every_secret_path_a_service_reads_is_in_its_own_volume(compose):
    """Each /run/secrets/NAME in a service's definition or its mounted config is a file generate.sh puts there."""
    stack_config = repo_path_for(compose, "pgvigil", "/etc/pgvigil/pgvigil.yaml").read_text()
    init_scripts = "".join(path.read_text() for path in
                           repo_path_for(compose, "postgres", "/docker-entrypoint-initdb.d").glob("*.sh"))
    extra = {"pgvigil": stack_config,
             "pgbouncer": repo_path_for(compose, "pgbouncer", "/etc/pgbouncer/pgbouncer.ini").read_text(),
             "postgres": init_scripts.replace("${PGVIGIL_SECRETS:-/run/secrets}", SECRETS_MOUNT)}
    for name, (_, _, files) in OWN_SECRETS.items():
        text = json.dumps(compose["services"][name]) + extra.get(name, "")
        read = set(re.findall(re.escape(SECRETS_MOUNT) + r"/([A-Za-z0-9_.]+)", text))
        assert read and read <= files, f"{name} reads {read - files} from outside its own secrets"


def test_demo_workload_runs_the_image_pgvigil_builds(compose):
    services = compose["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert sorted(builders) == ["pgbouncer", "pgvigil"]  # PgBouncer's image: deploy/pgbouncer
    workload = services["demo-workload"]
    assert workload["image"] == services["pgvigil"]["image"] and workload["pull_policy"] == "never"
    assert "pgvigil" in workload["depends_on"], "`up demo-workload` alone must still build the image"


def test_the_image_installs_pinned_packages():
    """Every package `pip install .` puts in the image (and the build backend) is pinned, within pyproject's range."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ENV PIP_CONSTRAINT=/usr/local/share/pgvigil/constraints.txt" in dockerfile
    assert dockerfile.index("PIP_CONSTRAINT") < dockerfile.index("RUN pip install")
    assert re.search(r"^COPY deploy/pgvigil/constraints.txt .*/usr/local/share/pgvigil/$", dockerfile, re.M)
    lines = [line.strip() for line in (ROOT / "deploy/pgvigil/constraints.txt").read_text().splitlines()]
    pins = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(text) for text in project["project"]["dependencies"] + project["build-system"]["requires"]]
    for requirement in wanted:
        version = pins.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not pinned in deploy/pgvigil/constraints.txt"
        assert requirement.specifier.contains(version), f"{requirement.name}=={version} breaks {requirement}"


def start_demo_workload(compose: dict, secrets: Path) -> subprocess.Popen:
    """The demo-workload service's entrypoint, run here with the secrets directory swapped in."""
    argv = [sys.executable if word == "python" else word.replace(SECRETS_MOUNT, str(secrets))
            for word in compose["services"]["demo-workload"]["entrypoint"]]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def start_stack_pgbouncer(compose: dict, userlist: Path, server_port: int,
                          workdir: Path) -> tuple[subprocess.Popen, int]:
    """PgBouncer from the stack's own pgbouncer.ini and generated userlist, in front of this server."""
    port = free_port()
    ini = repo_path_for(compose, "pgbouncer", "/etc/pgbouncer/pgbouncer.ini").read_text()
    for compose_value, local in (("host=postgres port=5432", f"host=127.0.0.1 port={server_port}"),
                                 ("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1"),
                                 ("listen_port = 6432", f"listen_port = {port}"),
                                 (f"{SECRETS_MOUNT}/userlist.txt", str(workdir / "userlist.txt"))):
        assert compose_value in ini
        ini = ini.replace(compose_value, local)
    (workdir / "pgbouncer.ini").write_text(ini)
    shutil.copy(userlist, workdir / "userlist.txt")
    binary = pgbouncer_binary()
    assert binary is not None, "pgbouncer is not installed (scripts/test.sh installs it)"
    argv = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        shutil.chown(workdir, "postgres", "postgres")
        for path in workdir.iterdir():
            shutil.chown(path, "postgres", "postgres")
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.Popen(argv, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), port


def console_answers(dsn: str, bouncer: subprocess.Popen) -> bool:
    assert bouncer.poll() is None, f"pgbouncer exited: {bouncer.stderr.read() if bouncer.stderr else ''}"
    try:
        psycopg.connect(dsn, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


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


def secret_files(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_secrets_script_makes_passwords_once_one_directory_per_service(tmp_path):
    script = ROOT / "deploy" / "secrets" / "generate.sh"
    env = dict(os.environ, SECRETS_DIR=str(tmp_path))
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
    first = secret_files(tmp_path)
    assert set(first) == {f"{subdir}/{name}" for _, subdir, files in OWN_SECRETS.values() for name in files}
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
    assert secret_files(tmp_path) == first, "a restart must not change passwords"
    monitor, superuser = first["postgres/monitor_password"], first["postgres/postgres_password"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", monitor) and re.fullmatch(r"[A-Za-z0-9]{32}", superuser)
    assert first["pgvigil/pgvigil_dsn"].strip() == f"postgresql://pgvigil:{monitor}@postgres:5432/app"
    assert first["demo/postgres_dsn"].strip() == f"postgresql://postgres:{superuser}@postgres:5432/app"
    assert first["pgvigil/pgbouncer_dsn"].strip() == f"postgresql://pgvigil:{monitor}@pgbouncer:6432/pgbouncer"
    assert first["pgbouncer/userlist.txt"].strip() == f'"pgvigil" "{monitor}"'
    for subdir in ("pgvigil", "grafana", "pgbouncer"):
        assert superuser not in "".join(secret_files(tmp_path / subdir).values())
    for path in tmp_path.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o400), f"{path} is {oct(mode)}"


def test_secrets_script_moves_the_old_shared_volume_apart(tmp_path):
    """A stack started before one volume per service kept every secret in pgvigil's: keep them, move them."""
    old = tmp_path / "pgvigil"
    old.mkdir()
    legacy = {"postgres_password": "P" * 32, "monitor_password": "M" * 32, "grafana_admin_password": "G" * 32,
              "postgres_dsn": "old", "pgvigil_dsn": "old"}
    for name, value in legacy.items():
        (old / name).write_text(value)
    subprocess.run(["sh", str(ROOT / "deploy/secrets/generate.sh")], env=dict(os.environ, SECRETS_DIR=str(tmp_path)),
                   check=True, capture_output=True)
    files = secret_files(tmp_path)
    assert files["postgres/postgres_password"] == "P" * 32 and files["postgres/monitor_password"] == "M" * 32
    assert files["grafana/grafana_admin_password"] == "G" * 32
    assert files["pgvigil/pgvigil_dsn"].strip() == f"postgresql://pgvigil:{'M' * 32}@postgres:5432/app"
    assert set(secret_files(old)) == {"pgvigil_dsn", "pgbouncer_dsn"}


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_init_script_role_runs_the_stack_config(compose, tmp_path):
    """The role the init script creates can run every shipped query with the stack's pgvigil config."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    subprocess.run(["sh", str(ROOT / "deploy/secrets/generate.sh")], env=dict(os.environ, SECRETS_DIR=str(secrets)),
                   check=True, capture_output=True)
    for path in secrets.rglob("*"):  # as root the files now belong to the services' users; this test is them
        path.chmod(0o700 if path.is_dir() else 0o600)
    compose_db = compose["services"]["postgres"]["environment"]["POSTGRES_DB"]
    with ThrowawayCluster() as pg:
        pg.create_database(compose_db)
        for script in sorted(repo_path_for(compose, "postgres", "/docker-entrypoint-initdb.d").glob("*.sh")):
            env = dict(os.environ, POSTGRES_USER="postgres", POSTGRES_DB=compose_db, PGHOST="127.0.0.1",
                       PGPORT=str(pg.port), PGVIGIL_SECRETS=str(secrets / "postgres"))
            ran = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
            assert ran.returncode == 0, ran.stderr
        assert pg.execute("SELECT pg_has_role('pgvigil', 'pg_monitor', 'MEMBER'), rolsuper FROM pg_roles "
                          "WHERE rolname = 'pgvigil'") == [(True, False)]
        # The stack's DSN files, pointing at this server instead of the compose network. The trust
        # authentication of the throwaway cluster ignores the passwords; the usernames still count.
        for name in ("pgvigil/pgvigil_dsn", "demo/postgres_dsn"):
            dsn = (secrets / name).read_text().replace("@postgres:5432/", f"@127.0.0.1:{pg.port}/")
            (secrets / name).write_text(dsn)
        # Not under tmp_path: as root PgBouncer runs as postgres, which cannot enter pytest's directories.
        bouncer_dir = Path(tempfile.mkdtemp(prefix="pgvigil-stack-pgbouncer-"))
        bouncer, bouncer_port = start_stack_pgbouncer(compose, secrets / "pgbouncer" / "userlist.txt", pg.port,
                                                      bouncer_dir)
        try:
            dsn = (secrets / "pgvigil/pgbouncer_dsn").read_text().replace("@pgbouncer:6432/",
                                                                          f"@127.0.0.1:{bouncer_port}/")
            (secrets / "pgvigil/pgbouncer_dsn").write_text(dsn)
            wait_until(lambda: console_answers(dsn.strip(), bouncer), timeout=15)
            workload = start_demo_workload(compose, secrets / "demo")
            try:
                wait_until(lambda: pg.execute("SELECT count(*) FROM orders WHERE id > 20000", compose_db)[0][0] > 0)
                config_text = repo_path_for(compose, "pgvigil", "/etc/pgvigil/pgvigil.yaml").read_text()
                config = parse_config(config_text.replace(SECRETS_MOUNT, str(secrets / "pgvigil")),
                                      "deploy/pgvigil/pgvigil.yaml")
                text = scrape_once(config)
            finally:
                workload.send_signal(signal.SIGTERM)
                assert workload.wait(timeout=30) == 0, workload.stderr.read()
        finally:
            bouncer.terminate()
            bouncer.wait(timeout=30)
            shutil.rmtree(bouncer_dir, ignore_errors=True)
    # the stack's PgBouncer, its console read with the generated password as a stats user
    assert 'pgbouncer_up{target="pgbouncer",env="compose"} 1' in text
    assert 'pgbouncer_databases_pool_size{target="pgbouncer",env="compose",name="app"' in text
    assert 'pg_stat_user_tables_n_live_tup{target="app",env="compose",datname="app",schemaname="public",' \
           'relname="customers"}' in text
    assert 'pg_up{target="app",env="compose"} 1' in text
    failed = [line for line in text.splitlines() if line.startswith("pgvigil_query_success") and line.endswith(" 0")]
    assert not failed, "queries failing as the monitoring role:\n" + "\n".join(failed)
    assert (secrets / "postgres" / "monitor_password").read_text() not in text


IMAGE_HEALTHCHECK = "/usr/local/share/pgvigil/healthcheck.py"  # where the Dockerfile copies it


def healthcheck_argv(compose: dict, port: int) -> list[str]:
    """pgvigil's compose healthcheck, run here: the image's copy of the script is the repository's file."""
    test = compose["services"]["pgvigil"]["healthcheck"]["test"]
    assert test == ["CMD", "python", IMAGE_HEALTHCHECK, "9187"]
    assert re.search(r"^COPY .*deploy/pgvigil/healthcheck.py .*/usr/local/share/pgvigil/$",
                     (ROOT / "Dockerfile").read_text(), re.M)
    return [sys.executable, str(ROOT / "deploy/pgvigil/healthcheck.py"), str(port)]


def web_config_for(mode: str, directory: Path) -> str | None:
    """A --web-config file for the mode: TLS (with basic auth or client certificates), or basic auth alone."""
    from tls_support import make_certificates

    from exporter.webconfig import hash_password

    if mode == "plain":
        return None
    text = ""
    if mode.startswith("tls"):
        certs = make_certificates(directory)
        text += f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.server_key}\n"
        if mode == "tls-client-certs":
            text += f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca}\n"
    if mode.endswith("basic-auth"):
        text += f"basic_auth_users:\n  prometheus: '{hash_password('s3cret', cost=4)}'\n"
    path = directory / "web.yml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("mode", ["plain", "tls-basic-auth", "tls-client-certs", "basic-auth"])
def test_pgvigil_healthcheck_works_with_and_without_web_config(compose, tmp_path, mode):
    from exporter.dev.throwaway import free_port

    port = free_port()
    config = tmp_path / "pgvigil.yaml"
    config.write_text("collectors: []\ntargets:\n  app: {dsn: 'postgresql://nobody@127.0.0.1:1/app'}\n")
    argv = [sys.executable, "-m", "exporter", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    web = web_config_for(mode, tmp_path)
    if web:
        argv += ["--web-config", web]
    check = healthcheck_argv(compose, port)
    down = subprocess.run(check, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and down.stdout.startswith("unhealthy: "), down.stdout
    server = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: subprocess.run(check, capture_output=True, timeout=30).returncode == 0, timeout=30)
        healthy = subprocess.run(check, capture_output=True, text=True, timeout=30)
        expected = {"plain": "healthy: HTTP 200", "basic-auth": "healthy: HTTP 401",
                    "tls-basic-auth": "healthy: HTTPS 401", "tls-client-certs": "healthy: "}[mode]
        assert healthy.stdout.startswith(expected), healthy.stdout
        if mode.startswith("tls"):
            # The check the stack used before: a plain HTTP GET, which a TLS listener never answers.
            old = subprocess.run([sys.executable, "-c", "import urllib.request; urllib.request.urlopen("
                                  f"'http://127.0.0.1:{port}/', timeout=4)"], capture_output=True, timeout=30)
            assert old.returncode != 0
    finally:
        server.terminate()
        server.wait(timeout=30)
    after = subprocess.run(check, capture_output=True, text=True, timeout=30)
    assert after.returncode == 1, after.stdout


def test_secret_files_belong_to_the_users_the_services_run_as(compose):
    """0400 files are readable by their owner only: the uid generate.sh gives each must be the service's."""
    script = (ROOT / "deploy/secrets/generate.sh").read_text()
    owners = dict(re.findall(r"^owner (\w+) (\d+)$", script, re.M))
    image_uid = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1)
    bouncer = (ROOT / "deploy/pgbouncer/Dockerfile").read_text()
    bouncer_uid = re.search(r"useradd .*--uid (\d+)", bouncer).group(1)
    assert re.search(rf"^USER {bouncer_uid}$", bouncer, re.M), "PgBouncer's image runs as the user it creates"
    assert owners == {"postgres": "999", "pgvigil": image_uid, "demo": image_uid, "grafana": "472",
                      "pgbouncer": bouncer_uid}
    # postgres:16 runs as postgres (999) and grafana/grafana as 472 unless told otherwise: nobody overrides it.
    assert all("user" not in compose["services"][name] for name in ("postgres", "pgvigil", "demo-workload", "grafana"))


def test_alertmanager_runs_as_a_cluster_of_two_and_prometheus_alerts_both(compose):
    """Either Alertmanager alone keeps paging: same config, peers of each other, every alert sent to both;
    Prometheus scrapes itself and both, which the PostgresMonitoring* alerts need."""
    pair = ("alertmanager", "alertmanager-2")
    for name, peer in (pair, pair[::-1]):
        service = compose["services"][name]
        config_path = repo_path_for(compose, name, "/etc/alertmanager/alertmanager.yml")
        assert config_path == ROOT / "deploy/alertmanager/alertmanager.yml"
        assert "--cluster.listen-address=0.0.0.0:9094" in service["command"]
        assert f"--cluster.peer={peer}:9094" in service["command"]
    assert len({compose["services"][name]["volumes"][1] for name in pair}) == 2  # a data volume each
    config = yaml.safe_load(repo_path_for(compose, "prometheus", "/etc/prometheus/prometheus.yml").read_text())
    [alerting] = config["alerting"]["alertmanagers"]
    assert alerting["static_configs"][0]["targets"] == [f"{name}:9093" for name in pair]
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs["alertmanager"] == [f"{name}:9093" for name in pair] and jobs["prometheus"] == ["localhost:9090"]


# The variables that let the stack run without Docker Hub (deploy/offline, docs/compose.md).
IMAGE_VARIABLE = re.compile(r"^\$\{(PGVIGIL_[A-Z]+_IMAGE):-([^}]+)\}$")
PORT_MAPPING = re.compile(r"^127\.0\.0\.1:\$\{(PGVIGIL_[A-Z0-9_]*PORT):-(\d+)\}:(\d+)$")


def image_variables(compose: dict) -> dict[str, set[str]]:
    """PGVIGIL_*_IMAGE -> the defaults it has, in images and in build args."""
    found: dict[str, set[str]] = {}
    for service in compose["services"].values():
        values = [service.get("image", "")]
        if isinstance(service.get("build"), dict):
            values.append(service["build"].get("args", {}).get("BASE_IMAGE", ""))
        for value in values:
            match = IMAGE_VARIABLE.match(value)
            if match:
                found.setdefault(match.group(1), set()).add(match.group(2))
    return found


def test_upstream_images_are_variables_with_the_upstream_default(compose):
    for name, service in compose["services"].items():
        if "build" in service or service.get("pull_policy") == "never":
            assert service["image"].endswith(":local"), name  # built here, never pulled
            continue
        match = IMAGE_VARIABLE.match(service["image"])
        assert match, f"{name}: image {service['image']} is not overridable by a PGVIGIL_*_IMAGE variable"
    # One default per variable: alert-log's python and the pgvigil build's base are the same image.
    assert all(len(defaults) == 1 for defaults in image_variables(compose).values()), image_variables(compose)


def test_published_ports_are_variables_with_the_documented_default(compose):
    variables = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            match = PORT_MAPPING.match(str(port))
            assert match, f"{name}: port {port} is not 127.0.0.1:${{PGVIGIL_..._PORT:-N}}:N"
            # The default keeps the README's port: the container's own, but for the second Alertmanager's.
            assert match.group(2) == {"PGVIGIL_ALERTMANAGER2_PORT": "9095"}.get(match.group(1), match.group(3)), port
            variables.append(match.group(1))
    assert len(variables) == len(set(variables)), variables


@pytest.mark.parametrize("dockerfile, service, upstream", [
    ("Dockerfile", "pgvigil", "python:3.11-slim"),
    ("deploy/pgbouncer/Dockerfile", "pgbouncer", "debian:bookworm-slim"),
])
def test_project_dockerfiles_take_their_base_image_as_a_build_arg(compose, dockerfile, service, upstream):
    text = (ROOT / dockerfile).read_text()
    assert re.search(rf"^ARG BASE_IMAGE={re.escape(upstream)}\nFROM \$\{{BASE_IMAGE\}}$", text, re.M), dockerfile
    assert len(re.findall(r"^FROM ", text, re.M)) == 1
    base = compose["services"][service]["build"]["args"]["BASE_IMAGE"]
    assert IMAGE_VARIABLE.match(base).group(2) == upstream


def test_the_offline_images_stand_in_for_every_image_variable(compose):
    from exporter.dev import offline_images
    offline = offline_images.read_env_file()
    variables = set(image_variables(compose))
    assert set(offline) == variables - {"PGVIGIL_GRAFANA_IMAGE"}  # Grafana: no Debian package
    for variable, image in offline.items():
        repository, name, tag = re.fullmatch(r"(pgvigil-offline)/(\w+):(latest)", image).groups()
        assert name in ("debian", *offline_images.IMAGES), variable
        if name != "debian":
            dockerfile = (ROOT / "deploy/offline" / name / "Dockerfile").read_text()
            assert "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n" in dockerfile


def test_python_healthchecks_import_only_what_their_image_installs(compose):
    """A `python -c "import X"` healthcheck needs X in the image: the pgvigil image has pgvigil's dependencies,
    the plain python image the standard library only (a psycopg2 healthcheck once kept demo-workload unhealthy)."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    installed = {Requirement(text).name.lower() for text in project["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    pgvigil_image = compose["services"]["pgvigil"]["image"]
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:3] != ["python", "-c"]:
            continue
        allowed = installed if service.get("image") == pgvigil_image else set()
        for module in re.findall(r"\bimport (\w+)", test[3]):
            if module in sys.stdlib_module_names:
                continue
            owners = {d.lower() for d in distributions.get(module, [])}
            assert owners & allowed, f"{name}: the healthcheck imports {module}, which its image does not install"
