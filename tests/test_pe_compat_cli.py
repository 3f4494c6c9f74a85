"""`pgvigil serve` in postgres_exporter's place: its environment and flags, as a service passes them.

Each test starts the `pgvigil` command with the environment Debian's unit gives postgres_exporter
(/etc/default/prometheus-postgres-exporter: DATA_SOURCE_NAME and ARGS) and nothing of pgvigil's own,
then reads /metrics over HTTP. docs/postgres_exporter.md is the guide these tests hold to.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from conftest import parse_exposition, sample

from exporter import postgres_exporter as pe
from exporter.config import load_config, parse_config
from exporter.dev.throwaway import ThrowawayCluster, free_port
from exporter.webconfig import hash_password

PGVIGIL = str(Path(sys.executable).with_name("pgvigil"))
POSTGRES_EXPORTER = shutil.which("prometheus-postgres-exporter") or shutil.which("postgres_exporter")
GUIDE = Path(__file__).resolve().parent.parent / "docs" / "postgres_exporter.md"


def service_env(**variables: str) -> dict[str, str]:
    """What a systemd unit with EnvironmentFile= gives the process: PATH and the file's variables."""
    return {"PATH": os.environ["PATH"], **variables}


class Served:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log_path = proc, port, log

    def get(self, path: str = "/metrics", headers: dict | None = None) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()

    def samples(self) -> dict:
        return parse_exposition(self.get())

    def names(self) -> set[str]:
        """Sample names as sent (prometheus_client's parser would add _total to counters)."""
        return {match.group(1) for match in map(_SAMPLE.match, self.get().splitlines()) if match}

    @property
    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def serving(tmp_path: Path, args: list[str], env: dict[str, str], port: int | None = None,
            wait_path: str = "/health") -> Iterator[Served]:
    """`pgvigil serve ARGS` with `env` only; listening on `port` (given by the test in ARGS or env)."""
    log = tmp_path / f"pgvigil-{uuid.uuid4().hex[:6]}.log"
    if port is None:
        port = free_port()
        args = [*args, f"--web.listen-address=127.0.0.1:{port}"]
    with open(log, "w") as err:
        proc = subprocess.Popen([PGVIGIL, "serve", *args], env=env, stdout=subprocess.DEVNULL, stderr=err)
    served = Served(proc, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                served.get(wait_path)
                break
            except urllib.error.HTTPError:
                break  # it answers (401, 503...)
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"pgvigil exited {proc.returncode}:\n{served.log}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def refused(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([PGVIGIL, "serve", *args], env=env, capture_output=True, text=True, timeout=60)


def taken_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "postgres_exporter settings taken: " in line]
    assert len(lines) == 1, log
    return lines[0].split("postgres_exporter settings taken: ", 1)[1]


def key_value_dsn(cluster: ThrowawayCluster, dbname: str) -> str:
    """The form Debian's default file suggests: `user=... host=... dbname=...`."""
    return f"user=postgres host=127.0.0.1 port={cluster.port} dbname={dbname} sslmode=disable"


# -- DATA_SOURCE_NAME --------------------------------------------------------------------------------


def test_data_source_name_alone_is_one_target_with_the_default_packs(tmp_path, cluster, fresh_db):
    dbname = fresh_db.rsplit("/", 1)[1]
    with serving(tmp_path, [], service_env(DATA_SOURCE_NAME=key_value_dsn(cluster, dbname))) as served:
        samples = served.samples()
        names = served.names()
    assert sample(samples, "pg_up", target="default") == 1
    for name in ("pg_stat_database_xact_commit", "pg_settings_max_connections", "pg_database_size_bytes",
                 "pg_stat_activity_count", "pg_locks_count"):
        assert name in names, name
    assert sample(samples, "pg_database_size_bytes", target="default", datname=dbname) > 0
    assert taken_line(served.log).startswith("DATA_SOURCE_NAME (1 target: default); --web.listen-address (127.0.0.1:")


def test_data_source_name_with_several_dsns_is_a_target_each(tmp_path, cluster, fresh_db):
    other = ThrowawayCluster(preload=())
    try:
        other.start()
        dsns = f"{fresh_db}?sslmode=disable,{key_value_dsn(other, 'postgres')}"
        with serving(tmp_path, [], service_env(DATA_SOURCE_NAME=dsns)) as served:
            samples = served.samples()
    finally:
        other.cleanup()
    first, second = f"127.0.0.1-{cluster.port}", f"127.0.0.1-{other.port}"
    assert sample(samples, "pg_up", target=first) == 1
    assert sample(samples, "pg_up", target=second) == 1
    assert sample(samples, "pg_settings_port", target=second) == other.port
    assert taken_line(served.log).startswith(f"DATA_SOURCE_NAME (2 targets: {first}, {second})")


def test_check_and_grants_read_the_targets_serve_would_run(cluster, fresh_db):
    """`pgvigil check` and `pgvigil grants` under postgres_exporter's environment see its targets."""
    dbname = fresh_db.rsplit("/", 1)[1]
    env = service_env(DATA_SOURCE_NAME=key_value_dsn(cluster, dbname))
    check = subprocess.run([PGVIGIL, "check", "--connect"], env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert "config OK: 1 target," in check.stdout
    assert "default" in check.stdout
    grants = subprocess.run([PGVIGIL, "grants"], env=env, capture_output=True, text=True, timeout=120)
    assert grants.returncode == 0, grants.stderr
    assert "default" in grants.stdout
    refused = subprocess.run([PGVIGIL, "check"], env=service_env(DATA_SOURCE_NAME=key_value_dsn(cluster, dbname),
                                                                 PG_EXPORTER_AUTO_DISCOVER_DATABASES="maybe"),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "PG_EXPORTER_AUTO_DISCOVER_DATABASES" in refused.stderr
    assert "Traceback" not in refused.stderr


# -- DATA_SOURCE_URI, _USER, _PASS and their files; passwords never shown --------------------------------


@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[ThrowawayCluster]:
    """A cluster that checks passwords (scram) for TCP logins other than the superuser's."""
    pg = ThrowawayCluster(preload=())
    pg.init()
    (pg.datadir / "pg_hba.conf").write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                                            "host all all 127.0.0.1/32 scram-sha-256\n")
    pg.start()
    try:
        yield pg
    finally:
        pg.cleanup()


def test_data_source_uri_user_and_pass_and_their_files(tmp_path, scram_cluster):
    password = "pw-" + uuid.uuid4().hex + "@:/%"  # characters a URI must escape
    scram_cluster.execute(f"CREATE ROLE monitor LOGIN PASSWORD '{password}' IN ROLE pg_monitor")
    uri = f"127.0.0.1:{scram_cluster.port}/postgres?sslmode=disable"
    (tmp_path / "user").write_text("monitor\n")
    (tmp_path / "pass").write_text(password + "\n")
    for env, source in ((dict(DATA_SOURCE_URI=uri, DATA_SOURCE_USER="monitor", DATA_SOURCE_PASS=password),
                         "DATA_SOURCE_URI + DATA_SOURCE_USER + DATA_SOURCE_PASS"),
                        (dict(DATA_SOURCE_URI=uri, DATA_SOURCE_USER_FILE=str(tmp_path / "user"),
                              DATA_SOURCE_PASS_FILE=str(tmp_path / "pass")),
                         "DATA_SOURCE_URI + DATA_SOURCE_USER_FILE + DATA_SOURCE_PASS_FILE")):
        with serving(tmp_path, [], service_env(**env)) as served:
            samples = served.samples()
            pages = served.get("/") + served.get("/health") + served.get("/sd")
        assert sample(samples, "pg_up", target="default") == 1, served.log
        assert taken_line(served.log).startswith(f"{source} (1 target: default)")
        assert password not in served.log + pages


def test_a_wrong_password_is_pg_up_0_and_never_shown(tmp_path, scram_cluster):
    wrong = "pw-" + uuid.uuid4().hex
    scram_cluster.execute("DO $$BEGIN CREATE ROLE monitor2 LOGIN PASSWORD 'right' IN ROLE pg_monitor; "
                          "EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    uri = f"127.0.0.1:{scram_cluster.port}/postgres?sslmode=disable"
    name = f"postgresql://monitor2:{wrong}@127.0.0.1:{scram_cluster.port}/postgres?sslmode=disable"
    for env in (dict(DATA_SOURCE_URI=uri, DATA_SOURCE_USER="monitor2", DATA_SOURCE_PASS=wrong),
                dict(DATA_SOURCE_NAME=name)):
        with serving(tmp_path, ["--log.level=debug"], service_env(**env)) as served:
            body = served.get()
            pages = served.get("/") + served.get("/sd")
            try:
                served.get("/health")
            except urllib.error.HTTPError as exc:  # 503: the target is down
                pages += exc.read().decode()
        assert sample(parse_exposition(body), "pg_up", target="default") == 0
        assert "password authentication failed" in served.log
        assert wrong not in served.log + body + pages


def test_an_unreadable_password_file_is_named_not_read(tmp_path):
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    result = refused([], service_env(DATA_SOURCE_URI="db:5432/postgres", DATA_SOURCE_USER="u",
                                     DATA_SOURCE_PASS_FILE=str(secret_dir / "missing")))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "postgres_exporter settings pgvigil cannot honour (1):",
        f"  DATA_SOURCE_PASS_FILE: cannot read {secret_dir / 'missing'}: no such file",
    ]


# -- --web.listen-address, --web.telemetry-path, --web.config.file ----------------------------------------


def test_listen_address_flag_and_variable_and_who_wins(tmp_path, fresh_db):
    env = service_env(DATA_SOURCE_NAME=fresh_db + "?sslmode=disable")
    port = free_port()
    with serving(tmp_path, [f"--web.listen-address=:{port}"], env, port=port) as served:
        assert sample(served.samples(), "pg_up", target="default") == 1
    assert f"listening on 0.0.0.0:{port}" in served.log
    port = free_port()
    with serving(tmp_path, [], {**env, "PG_EXPORTER_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}"}, port=port) as served:
        assert sample(served.samples(), "pg_up", target="default") == 1
    assert f"PG_EXPORTER_WEB_LISTEN_ADDRESS (127.0.0.1:{port})" in taken_line(served.log)
    # pgvigil's own --listen wins, and the log says so
    port = free_port()
    with serving(tmp_path, ["--listen", f"127.0.0.1:{port}", "--web.listen-address", ":1"], env,
                 port=port) as served:
        assert sample(served.samples(), "pg_up", target="default") == 1
    assert "postgres_exporter settings: --web.listen-address: not used (pgvigil's own setting wins)" in served.log


def test_without_a_listen_address_pgvigil_stays_on_loopback_and_says_so(caplog):
    """postgres_exporter listened on every interface by default; pgvigil keeps to loopback, loudly."""
    from exporter.cli import log_postgres_exporter_settings

    settings = pe.read_settings([], {"DATA_SOURCE_NAME": "host=db"})
    built = pe.Built(load_config(None), ("DATA_SOURCE_NAME (1 target: default)",))
    with caplog.at_level("INFO", logger="pgvigil"):
        log_postgres_exporter_settings(built, settings, {"web.listen-address": "default"}, "127.0.0.1:9187")
    assert [r.getMessage() for r in caplog.records] == [
        "postgres_exporter settings taken: DATA_SOURCE_NAME (1 target: default)",
        "listening on 127.0.0.1:9187 only (pgvigil's default); postgres_exporter listened on every interface "
        "(:9187): if Prometheus scrapes from another host, set --web.listen-address=:9187 (or --listen 0.0.0.0:9187)",
    ]
    result = refused(["--web.listen-address", "not-an-address"], service_env())
    assert result.returncode == 2
    assert result.stderr.strip() == "invalid --web.listen-address: expected host:port such as 127.0.0.1:9187 " \
                                    "(a port from 0 to 65535), got the string 'not-an-address'"


def test_telemetry_path_metrics_is_accepted_another_is_refused(tmp_path, fresh_db):
    env = service_env(DATA_SOURCE_NAME=fresh_db + "?sslmode=disable")
    with serving(tmp_path, ["--web.telemetry-path=/metrics"], env) as served:
        assert sample(served.samples(), "pg_up", target="default") == 1
    assert "--web.telemetry-path (/metrics)" in taken_line(served.log)
    result = refused([], {**env, "PG_EXPORTER_WEB_TELEMETRY_PATH": "/pg"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "postgres_exporter settings pgvigil cannot honour (1):",
        "  PG_EXPORTER_WEB_TELEMETRY_PATH: pgvigil serves metrics at /metrics only, got '/pg'; set metrics_path: "
        "/metrics in Prometheus' scrape config (see docs/postgres_exporter.md)",
    ]


def test_web_config_file_is_the_web_config(tmp_path, fresh_db):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prom: " + hash_password("scrape-pass", cost=4) + "\n")
    env = service_env(DATA_SOURCE_NAME=fresh_db + "?sslmode=disable")
    with serving(tmp_path, [f"--web.config.file={web}"], env) as served:
        with pytest.raises(urllib.error.HTTPError) as denied:
            served.get()
        token = base64.b64encode(b"prom:scrape-pass").decode()
        body = served.get(headers={"Authorization": f"Basic {token}"})
    assert denied.value.code == 401
    assert sample(parse_exposition(body), "pg_up", target="default") == 1
    assert f"--web.config.file ({web})" in taken_line(served.log)


# -- --auto-discover-databases, --include-databases, --exclude-databases ---------------------------------


def test_auto_discover_databases_is_databases_all(tmp_path, cluster, fresh_db):
    dbname = fresh_db.rsplit("/", 1)[1]
    other = dbname + "_x"
    cluster.execute(f'CREATE DATABASE "{other}"')
    try:
        env = service_env(DATA_SOURCE_NAME=f"{fresh_db}?sslmode=disable", PG_EXPORTER_AUTO_DISCOVER_DATABASES="true",
                          PG_EXPORTER_EXCLUDE_DATABASES=f"postgres, {other}")
        with serving(tmp_path, [], env) as served:
            samples = served.samples()
        assert sample(samples, "pg_up", target="default", datname=dbname) == 1
        assert sample(samples, "pg_up", target="default", datname=other) is None
        assert sample(samples, "pgvigil_discovery_databases", target="default", outcome="excluded") >= 2
        assert taken_line(served.log).startswith(
            "DATA_SOURCE_NAME (1 target: default); PG_EXPORTER_AUTO_DISCOVER_DATABASES (databases: all); "
            f"PG_EXPORTER_EXCLUDE_DATABASES (exclude_databases: postgres, {other})")
        args = ["--auto-discover-databases", f"--include-databases={other}"]
        with serving(tmp_path, args, service_env(DATA_SOURCE_NAME=key_value_dsn(cluster, "postgres"))) as served:
            samples = served.samples()
        assert sample(samples, "pg_up", target="default", datname=other) == 1
        assert sample(samples, "pg_up", target="default", datname=dbname) is None
        assert f"--include-databases (databases: {other})" in taken_line(served.log)
    finally:
        cluster.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


def test_include_databases_without_auto_discovery_is_a_note(tmp_path, fresh_db):
    env = service_env(DATA_SOURCE_NAME=fresh_db + "?sslmode=disable", PG_EXPORTER_INCLUDE_DATABASES="a,b")
    with serving(tmp_path, [], env) as served:
        assert sample(served.samples(), "pg_up", target="default") == 1
    assert ("postgres_exporter settings: PG_EXPORTER_INCLUDE_DATABASES: only with --auto-discover-databases, "
            "as in postgres_exporter") in served.log


# -- --log.level, --log.format ------------------------------------------------------------------------------


def test_log_level_and_format_in_postgres_exporter_words(tmp_path, fresh_db):
    env = service_env(DATA_SOURCE_NAME=fresh_db + "?sslmode=disable")
    with serving(tmp_path, ["--log.level=warn", "--log.format=json"], env) as served:
        served.get()
    entries = [json.loads(line) for line in served.log.splitlines()]
    assert entries and {e["level"] for e in entries} <= {"warning", "error"}
    with serving(tmp_path, ["--log.level", "debug", "--log.format", "logfmt", "--log-level", "info"], env) as served:
        served.get()
    assert " INFO pgvigil: pgvigil " in served.log and " DEBUG " not in served.log  # --log-level wins
    assert "--log.level: not used (pgvigil's own setting wins)" in served.log
    assert "--log.format (text)" in taken_line(served.log)
    result = refused(["--log.level=verbose", "--log.format=yaml"], env)
    assert result.returncode == 2
    assert result.stderr.splitlines()[1:] == [
        "  --log.level: expected one of debug, info, warn, error, got the string 'verbose'",
        "  --log.format: expected logfmt or json, got the string 'yaml'",
    ]


# -- --extend.query-path: queries.yaml converted ------------------------------------------------------------

QUERIES_YAML = """\
pg_app_orders:
  query: |
    SELECT status, count(*) AS orders, sum(amount) AS amount, max(created) AS last_created,
           bool_or(paid) AS any_paid, 'x' AS note
    FROM orders GROUP BY status
  metrics:
    - status:
        usage: "LABEL"
        description: "Order status"
    - orders:
        usage: "GAUGE"
        description: "Orders in this status"
    - amount:
        usage: "COUNTER"
        description: "Sum of the orders' amounts"
    - last_created:
        usage: "GAUGE"
        description: "Newest order, epoch seconds"
    - any_paid:
        usage: "GAUGE"
        description: "Whether one is paid"
    - note:
        usage: "DISCARD"
        description: "Not exported"
pg_app_master:
  query: "SELECT 1 AS one"
  master: true
  cache_seconds: 30
  metrics:
    - one:
        usage: "GAUGE"
        description: "Runs in the DSN's database only"
pg_app_since_10:
  query: "SELECT 2 AS two"
  runonserver: ">=10.0.0"
  metrics:
    - two:
        usage: "COUNTER"
        description: "Runs on PostgreSQL 10 and later"
pg_app_before_9_6:
  query: "SELECT 3 AS three"
  runonserver: "<9.6.0"
  metrics:
    - three:
        usage: "GAUGE"
        description: "Never runs here"
"""

# What postgres_exporter exports for QUERIES_YAML on the data below: name -> (type, {label set: value}).
EXPECTED = {
    "pg_app_orders_orders": ("gauge", {(("status", "new"),): 2.0, (("status", "paid"),): 1.0}),
    "pg_app_orders_amount": ("counter", {(("status", "new"),): 30.5, (("status", "paid"),): 100.25}),
    "pg_app_orders_last_created": ("gauge", {(("status", "new"),): 1700000100.0, (("status", "paid"),): 1700000000.0}),
    "pg_app_orders_any_paid": ("gauge", {(("status", "new"),): 0.0, (("status", "paid"),): 1.0}),
    "pg_app_master_one": ("gauge", {(): 1.0}),
    "pg_app_since_10_two": ("counter", {(): 2.0}),
}
HELP = {"pg_app_orders_orders": "Orders in this status", "pg_app_orders_amount": "Sum of the orders' amounts",
        "pg_app_master_one": "Runs in the DSN's database only"}

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def families(text: str, own_label: str, prefix: str) -> tuple[dict, dict]:
    """Exposition text as sent (no renaming): name -> (type, {labels without the exporter's own: value}),
    and name -> HELP, for the names starting with `prefix`."""
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    out: dict[str, tuple[str, dict]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE ") or line.startswith("# HELP "):
            _, kind, name, rest = line.split(" ", 3)
            (types if kind == "TYPE" else helps)[name] = rest
            continue
        match = _SAMPLE.match(line)
        if line.startswith("#") or not match or not match.group(1).startswith(prefix):
            continue
        name, body, value = match.groups()
        labels = tuple(sorted((k, v) for k, v in _LABEL.findall(body or "") if k != own_label))
        out.setdefault(name, (types.get(name, "untyped"), {}))[1][labels] = float(value)
    return out, {name: helps[name] for name in out if name in helps}


@pytest.fixture
def orders_db(fresh_db, cluster):
    dbname = fresh_db.rsplit("/", 1)[1]
    cluster.execute("CREATE TABLE orders (status text, amount numeric, created timestamptz, paid boolean);"
                    "INSERT INTO orders VALUES ('new', 10.5, to_timestamp(1700000100), false),"
                    " ('new', 20, to_timestamp(1700000050), false), ('paid', 100.25, to_timestamp(1700000000), true)",
                    dbname=dbname)
    return fresh_db + "?sslmode=disable"


def test_extend_query_path_is_converted_with_postgres_exporters_names_and_values(tmp_path, orders_db):
    queries = tmp_path / "queries.yaml"
    queries.write_text(QUERIES_YAML)
    env = service_env(DATA_SOURCE_NAME=orders_db, PG_EXPORTER_EXTEND_QUERY_PATH=str(queries))
    with serving(tmp_path, [], env) as served:
        ours, helps = families(served.get(), "target", "pg_app_")
        landing = served.get("/")
    assert ours == EXPECTED
    assert {name: helps[name] for name in HELP} == HELP
    assert "pg_app_orders_note" not in landing and "pg_app_before_9_6" in landing  # known, skipped by version
    assert (f"PG_EXPORTER_EXTEND_QUERY_PATH {queries} (4 queries: pg_app_orders, pg_app_master, pg_app_since_10, "
            "pg_app_before_9_6)") in taken_line(served.log)


@pytest.mark.skipif(POSTGRES_EXPORTER is None, reason="postgres_exporter not installed (scripts/test.sh installs it)")
def test_converted_queries_match_postgres_exporter_itself(tmp_path, orders_db):
    """The same queries.yaml, the same database: postgres_exporter's series, name for name and value for value."""
    queries = tmp_path / "queries.yaml"
    queries.write_text(QUERIES_YAML)
    args = [f"--extend.query-path={queries}", "--disable-default-metrics", "--disable-settings-metrics",
            "--no-collector.database", "--no-collector.bgwriter"]
    env = service_env(DATA_SOURCE_NAME=orders_db)
    port = free_port()
    proc = subprocess.Popen([POSTGRES_EXPORTER, *args, f"--web.listen-address=127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        theirs_text = _wait_get(f"http://127.0.0.1:{port}/metrics", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    theirs, their_help = families(theirs_text, "server", "pg_app_")
    with serving(tmp_path, args, env) as served:
        ours, our_help = families(served.get(), "target", "pg_app_")
    # postgres_exporter (0.11, at least) runs a query whatever its runonserver says; pgvigil honours it
    # (min_server_version/max_server_version), as the guide says
    assert theirs.pop("pg_app_before_9_6_three") == ("gauge", {(): 3.0})
    their_help.pop("pg_app_before_9_6_three")
    assert theirs == EXPECTED
    assert ours == theirs
    assert our_help == their_help


def _wait_get(url: str, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)


def test_a_queries_yaml_namespace_replaces_the_pack_query_of_the_same_names(tmp_path, fresh_db):
    """As a queries.yaml namespace replaced postgres_exporter's built-in one (pg_database in its old sample)."""
    queries = tmp_path / "queries.yaml"
    queries.write_text("pg_database:\n"
                       "  query: \"SELECT datname, 42 AS size_bytes FROM pg_database WHERE datname = 'postgres'\"\n"
                       "  metrics:\n"
                       "    - datname: {usage: LABEL, description: Name of the database}\n"
                       "    - size_bytes: {usage: GAUGE, description: Disk space used by the database}\n")
    env = service_env(DATA_SOURCE_NAME=fresh_db + "?sslmode=disable", PG_EXPORTER_EXTEND_QUERY_PATH=str(queries))
    with serving(tmp_path, [], env) as served:
        samples = served.samples()
    assert [v for (n, _), v in samples.items() if n == "pg_database_size_bytes"] == [42]
    assert sample(samples, "pg_database_connection_limit", datname="postgres") is not None  # the pack's other query
    log = served.log
    assert (f"postgres_exporter settings: {queries}: pg_database replaces pgvigil's query pg_database_size "
            "(pack database): both export pg_database_size_bytes") in log
    assert (f"postgres_exporter settings: {queries}: pg_database runs as query pg_database_queries_yaml "
            "(pgvigil's query pg_database exports other series); its metric names are unchanged") in log


def test_queries_yaml_errors_are_located_in_its_own_terms(tmp_path):
    queries = tmp_path / "queries.yaml"
    queries.write_text("""\
pg_ok:
  query: "SELECT 1 AS x"
  metrics:
    - x: {usage: GAUGE}
pg_mapped:
  query: "SELECT 'a' AS s, 1 AS x"
  metrics:
    - s: {usage: MAPPEDMETRIC, mapping: {a: 1}}
    - x: {usage: GUAGE}
pg_writes:
  query: "DELETE FROM t RETURNING 1 AS x"
  metrics:
    - x: {usage: GAUGE}
pg_reserved:
  query: "SELECT 'x' AS target, 1 AS n"
  metrics:
    - target: {usage: LABEL}
    - n: {usage: COUNTER}
pg_range:
  query: "SELECT 1 AS x"
  runonserver: ">=9.6.0 || <9.0.0"
  metrics:
    - x: {usage: GAUGE}
pg_no_query:
  metrics:
    - x: {usage: GAUGE}
""")
    result = refused([f"--extend.query-path={queries}"], service_env(DATA_SOURCE_NAME="host=127.0.0.1"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "invalid configuration (6 errors):",
        f"  {queries}:8: pg_mapped.metrics[0].s.usage: usage MAPPEDMETRIC is not converted: it maps text values to "
        "numbers: return the number from the SQL (CASE col WHEN 'a' THEN 1 ... END) and use GAUGE "
        "(see docs/postgres_exporter.md)",
        f"  {queries}:9: pg_mapped.metrics[1].x.usage: expected usage LABEL, GAUGE, COUNTER or DISCARD, "
        "got the string 'GUAGE'; did you mean 'GAUGE'?",
        f"  {queries}:11: pg_writes.query: expected a SELECT, WITH, VALUES or TABLE query, got a DELETE statement",
        f"  {queries}:17: pg_reserved.metrics[0].target: label 'target' is set by pgvigil; rename the column",
        f"  {queries}:21: pg_range.runonserver: a range with || is not converted: split the query in two, "
        "one range each",
        f"  {queries}:24: pg_no_query: missing required key 'query'",
    ]


def test_queries_yaml_warnings_do_not_stop_the_exporter(tmp_path, fresh_db):
    queries = tmp_path / "queries.yaml"
    queries.write_text("pg_labels_only:\n  query: SELECT 'a' AS x\n  metrics:\n    - x: {usage: LABEL}\n"
                       "pg_typo:\n  query: SELECT 1 AS x\n  cache_second: 5\n  metrics:\n    - x: {usage: GAUGE}\n")
    env = service_env(DATA_SOURCE_NAME=fresh_db + "?sslmode=disable")
    with serving(tmp_path, [f"--extend.query-path={queries}"], env) as served:
        assert sample(served.samples(), "pg_typo_x", target="default") == 1
    assert (f"WARNING pgvigil: {queries}:3: pg_labels_only.metrics: no GAUGE or COUNTER column: the query exports "
            "nothing and is left out") in served.log
    assert (f"WARNING pgvigil: {queries}:7: pg_typo.cache_second: unknown key ignored, as postgres_exporter does; "
            "did you mean 'cache_seconds'?") in served.log


# -- --disable-default-metrics, --disable-settings-metrics, --[no-]collector.X -----------------------------


def test_disable_settings_metrics_and_collector_flags(tmp_path, fresh_db):
    env = service_env(DATA_SOURCE_NAME=fresh_db + "?sslmode=disable", PG_EXPORTER_DISABLE_SETTINGS_METRICS="true")
    args = ["--no-collector.stat_database", "--no-collector.replication_slot", "--collector.stat_statements",
            "--collector.long_running_transactions", "--collector.stat_statements.limit", "100",
            "--no-collector.made_up"]
    with serving(tmp_path, args, env) as served:
        samples = served.samples()
        names = served.names()
    assert sample(samples, "pg_up", target="default") == 1
    assert not any(n.startswith(("pg_settings_", "pg_stat_database_xact", "pg_replication_slot")) for n in names)
    assert "pg_database_size_bytes" in names and "pg_locks_count" in names and "pg_stat_activity_count" in names
    log = served.log
    assert "PG_EXPORTER_DISABLE_SETTINGS_METRICS, --no-collector.stat_database, --no-collector.replication_slots, " \
           "--collector.stat_statements (" in taken_line(log)
    for note in ("--collector.long_running_transactions: not used (pgvigil has no query for postgres_exporter's "
                 "long_running_transactions collector)",
                 "--collector.stat_statements.limit: not used (pgvigil's packs have no such option)",
                 "--no-collector.made_up: not used (not a postgres_exporter collector pgvigil knows)"):
        assert f"postgres_exporter settings: {note}" in log


def test_disable_default_metrics_keeps_postgres_exporters_default_collectors(tmp_path, fresh_db):
    env = service_env(DATA_SOURCE_NAME=fresh_db + "?sslmode=disable")
    with serving(tmp_path, ["--disable-default-metrics", "--no-collector.wal"], env) as served:
        names = served.names()
    # postgres_exporter 0.20's default collectors run on; pgvigil's additions and the legacy map do not
    for kept in ("pg_database_size_bytes", "pg_stat_database_xact_commit", "pg_settings_max_connections",
                 "pg_stat_activity_count", "pg_locks_count", "pg_stat_bgwriter_buffers_alloc_total", "pg_up"):
        assert kept in names, kept
    for gone in ("pg_wal_segments", "pg_stat_statements_calls_total", "pg_stat_database_conflicts_confl_lock",
                 "pg_static", "pg_stat_io_reads_total", "pg_security_tables_without_rls"):
        assert gone not in names, gone


# -- precedence: a --config file and pgvigil's own variables win ---------------------------------------------


def test_a_config_file_wins_and_the_log_says_what_was_set_aside(tmp_path, cluster, fresh_db):
    dbname = fresh_db.rsplit("/", 1)[1]
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"collectors: [database]\ntargets:\n  app: {fresh_db}\n")
    queries = tmp_path / "queries.yaml"
    queries.write_text("pg_extra:\n  query: SELECT 5 AS five\n  metrics:\n    - five: {usage: GAUGE}\n")
    env = service_env(DATA_SOURCE_NAME=key_value_dsn(cluster, "postgres"), PG_EXPORTER_EXTEND_QUERY_PATH=str(queries),
                      PG_EXPORTER_AUTO_DISCOVER_DATABASES="true")
    with serving(tmp_path, ["--config", str(config), "--no-collector.locks"], env) as served:
        samples = served.samples()
    assert sample(samples, "pg_up", target="app") == 1
    assert sample(samples, "pg_extra_five", target="app") == 5
    assert sample(samples, "pg_database_size_bytes", target="app", datname=dbname) > 0
    assert sample(samples, "pg_up", target="default") is None
    log = served.log
    for note in ("DATA_SOURCE_NAME: not used (the config file's targets win)",
                 "PG_EXPORTER_AUTO_DISCOVER_DATABASES: not used (the config file decides targets and packs)",
                 "--no-collector.locks: not used (the config file's collectors: decides)"):
        assert f"postgres_exporter settings: {note}" in log
    assert f"PG_EXPORTER_EXTEND_QUERY_PATH {queries} (1 query: pg_extra)" in taken_line(log)
    # a config file without targets takes the DSN, like --dsn
    config.write_text("collectors: []\n")
    with serving(tmp_path, ["--config", str(config)], env) as served:
        assert sample(served.samples(), "pg_up", target="default") == 1
    assert taken_line(served.log).startswith("DATA_SOURCE_NAME (target default)")


def test_pgvigil_dsn_wins_over_data_source_name(tmp_path, fresh_db):
    env = service_env(DATA_SOURCE_NAME="host=127.0.0.1 port=1 user=nobody", PGVIGIL_DSN=fresh_db)
    with serving(tmp_path, ["--disable-settings-metrics"], env) as served:
        samples = served.samples()
    assert sample(samples, "pg_up", target="default") == 1
    assert "postgres_exporter settings: DATA_SOURCE_NAME: not used (--dsn or PGVIGIL_DSN wins)" in served.log


def test_a_flag_neither_exporter_has_is_refused_with_a_hint():
    result = refused(["--web.listen-adress=:9187"], service_env())
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == \
        "Error: No such option: --web.listen-adress (Possible options: --web.listen-address)"
    for args, problem in ((["--metric-prefix=postgres"], "--metric-prefix: pgvigil exports postgres_exporter's "
                           "metric names, which start with pg_, got the prefix 'postgres'; rename them in Prometheus "
                           "with metric_relabel_configs (see docs/postgres_exporter.md)"),
                          (["--web.listen-address=:1", "--web.listen-address=:2"],
                           "--web.listen-address: pgvigil listens on one address, got 2; give one (and put a proxy "
                           "in front for the others)"),
                          (["--web.systemd-socket"], "--web.systemd-socket: pgvigil opens its own listening socket; "
                           "give --web.listen-address instead (and disable the .socket unit)")):
        result = refused(args, service_env())
        assert result.returncode == 2
        assert result.stderr.splitlines() == ["postgres_exporter settings pgvigil cannot honour (1):", f"  {problem}"]


# -- pieces, without a server --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("1m", 60.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0),
                                           ("0", 0.0), ("1x", None), ("m", None), ("", None)])
def test_go_duration(text, seconds):
    assert pe.go_duration(text) == seconds


@pytest.mark.parametrize("version, number", [("9.6.24", 90624), ("9.6.0", 90600), ("10.0.0", 100000),
                                             ("15.4.0", 150004), ("15.4", 150004), ("16", 160000), ("x", None)])
def test_server_version_num(version, number):
    assert pe.server_version_num(version) == number


def test_target_names_tell_servers_and_databases_apart():
    assert pe.target_names(("host=db1",)) == ["default"]
    assert pe.target_names(("postgresql://u:p@db1:5433/app", "host=db2 dbname=app")) == ["db1-5433", "db2-5432"]
    assert pe.target_names(("host=db1 dbname=a", "host=db1 dbname=b", "host=/run/postgresql", "no equals")) == \
        ["db1-5432-a", "db1-5432-b", "run_postgresql-5432", "dsn4"]


def test_the_collector_table_names_real_queries():
    names = {q.name for q in load_config(None).queries}
    assert set(pe.QUERY_COLLECTORS) <= names
    assert {c for owners in pe.QUERY_COLLECTORS.values() for c in owners} <= set(pe.PE_COLLECTORS)


def test_the_guide_lists_every_flag_and_variable():
    text = GUIDE.read_text()
    for flag in pe.FLAGS.values():
        assert f"`--{flag.name}" in text, flag.name
        if flag.env:
            assert f"`{flag.env}`" in text, flag.env
    for variable in pe.DATA_SOURCE_VARIABLES:
        assert f"`{variable}`" in text, variable


def test_the_guides_example_converts_to_the_guides_pgvigil_query(tmp_path):
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    theirs = next(b for b in blocks if b.startswith("# postgres_exporter's queries.yaml"))
    ours = next(b for b in blocks if b.startswith("queries:\n  - name: pg_app_orders"))
    path = tmp_path / "queries.yaml"
    path.write_text(theirs)
    assert pe.convert_queries(str(path), ()).queries == parse_config("collectors: []\n" + ours).queries
