"""Discovered databases over HTTP against a real PostgreSQL: /probe, /health, /sd and the landing page;
and a real Prometheus that finds them through /sd and scrapes each through /probe."""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import parse_exposition, sample

from exporter.config import parse_config
from exporter.dev import stack
from exporter.server import start_server


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def databases(cluster):
    """Two databases with a unique prefix, dropped at the end."""
    prefix = "sd_" + uuid.uuid4().hex[:6]
    for name in ("app", "billing"):
        cluster.execute(f'CREATE DATABASE "{prefix}_{name}"')
    yield prefix
    for name in ("app", "billing"):
        cluster.execute(f'DROP DATABASE IF EXISTS "{prefix}_{name}" WITH (FORCE)')


@pytest.fixture
def server(cluster, databases):
    config = parse_config(f"collectors: []\ntargets:\n  prod:\n    dsn: {cluster.dsn()}\n"
                          f"    databases: ['{databases}_*']\n"
                          "queries:\n  - {name: q, sql: \"SELECT 1 AS x\", metrics: {x: {}}}\n")
    handle = start_server(config)
    yield handle
    handle.stop()


def test_probe_takes_a_discovered_database_or_its_root(server, databases):
    status, _, body = get(f"{server.url}/probe?target=prod/{databases}_app")
    samples = parse_exposition(body)
    assert status == 200 and sample(samples, "q_x", target="prod", datname=f"{databases}_app") == 1
    assert sample(samples, "q_x", datname=f"{databases}_billing") is None
    samples = parse_exposition(get(f"{server.url}/probe?target=prod")[2])
    assert sample(samples, "q_x", datname=f"{databases}_billing") == 1
    assert sample(samples, "pgvigil_discovery_databases", target="prod", outcome="monitored") == 2
    status, _, body = get(f"{server.url}/probe?target=prod/nope")
    # prod/postgres: the DSN's database, left out by the patterns, runs the cluster-wide queries only.
    assert status == 400 and f"prod, prod/postgres, prod/{databases}_app, prod/{databases}_billing" in body


def test_health_and_the_landing_page_list_discovered_databases(server, databases):
    status, _, body = get(server.url + "/health")  # before any scrape: the list is read, no database visited
    report = json.loads(body)
    assert status == 200 and report["status"] == "ok"
    assert report["discovery"]["prod"]["up"] is True and report["discovery"]["prod"]["not_yet_scraped"] == 2
    assert {name: t["up"] for name, t in report["targets"].items() if name != "prod/postgres"} == {
        f"prod/{databases}_app": None, f"prod/{databases}_billing": None}  # not yet scraped, not down
    get(server.url + "/metrics")
    status, _, body = get(server.url + "/health")
    report = json.loads(body)
    assert status == 200 and report["status"] == "ok"
    assert set(report["targets"]) == {"prod/postgres", f"prod/{databases}_app", f"prod/{databases}_billing"}
    assert all(t["up"] is True for t in report["targets"].values())
    assert report["discovery"]["prod"]["up"] is True and report["discovery"]["prod"]["monitored"] == 2
    assert report["discovery"]["prod"]["not_yet_scraped"] == 0
    body = get(server.url + "/")[2]
    assert f"prod/{databases}_app: up" in body and "prod (databases: 2 databases discovered" in body


def test_sd_lists_every_database_as_a_probe_target(server, databases):
    status, content_type, body = get(server.url + "/sd")
    groups = json.loads(body)
    assert status == 200 and content_type == "application/json"
    address = server.url.removeprefix("http://")
    assert groups == [{"targets": [address], "labels": {
        "__metrics_path__": "/probe", "__param_target": f"prod/{datname}",
        "instance": f"prod/{datname}", "__meta_pgvigil_target": "prod",
        "__meta_pgvigil_datname": datname}}
        for datname in ("postgres", f"{databases}_app", f"{databases}_billing")]  # the DSN's database first


def sd_targets(url: str, host_header: str) -> list[list[str]]:
    """The `targets` of each /sd group, asked with a `Host` header of the client's choosing."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.putrequest("GET", "/sd", skip_host=True)
        connection.putheader("Host", host_header)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 200
        return [group["targets"] for group in json.loads(response.read())]
    finally:
        connection.close()


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:0"])
@pytest.mark.parametrize("forged", ["evil.example:9187", "169.254.169.254:80", "127.0.0.1:1", ""])
def test_sd_targets_the_exporter_whatever_the_host_header_says(listen, forged):
    """A client writes the Host header: /sd must not hand Prometheus an address of the client's choosing."""
    config = parse_config("collectors: []\ntargets:\n  a: postgresql://u@127.0.0.1:1/x\n  b: postgresql://u@127.0.0.1:1/y\n")
    handle = start_server(config, listen=listen)
    try:
        port = handle.server.server_address[1]
        url = f"http://127.0.0.1:{port}"
        assert sd_targets(url, forged) == [[f"127.0.0.1:{port}"], [f"127.0.0.1:{port}"]]
    finally:
        handle.stop()


@pytest.mark.skipif(not any(Path(p).exists() for p in ("/usr/bin/prometheus", "/usr/local/bin/prometheus")),
                    reason="prometheus binary not installed (scripts/test.sh installs it)")
def test_prometheus_finds_the_databases_through_sd_and_probes_each(server, databases, tmp_path):
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "postgres",
                                  "http_sd_configs": [{"url": server.url + "/sd", "refresh_interval": "1s"}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    binary = stack.find_binary(stack.PROMETHEUS_BINARIES)
    prometheus = stack._launch("prometheus", tmp_path, False, lambda port: [  # noqa: SLF001 (a config of our own)
        binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = prometheus.query('q_x{job="postgres"}')
            if len(result) == 2:
                break
            time.sleep(0.5)
        series = sorted((r["metric"]["instance"], r["metric"]["datname"], r["metric"]["target"]) for r in result)
        assert series == [(f"prod/{databases}_{n}", f"{databases}_{n}", "prod") for n in ("app", "billing")]
        assert all(r["value"][1] == "1" for r in prometheus.query('up{job="postgres"}'))
    finally:
        prometheus.stop()
