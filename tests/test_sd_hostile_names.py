"""Database names a hostile tenant chooses, end to end through /sd: a real PostgreSQL holds them, a real
Prometheus discovers them through pgvigil's /sd, relabels them through the fleet's hashmod sharding and
probes each; every name arrives as the exact label value, whatever quotes, newlines, template syntax,
URL metacharacters or length it has, and no probe fails."""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from exporter.bundle.fleet import Topology, shard_relabeling
from exporter.config import parse_config
from exporter.dev import stack
from exporter.server import start_server

PREFIX = "hx_"
NAMES = (
    PREFIX + 'q"uo\'te',
    PREFIX + "new\nline",
    PREFIX + "{{ $labels.instance }} {{ .Status }}",
    PREFIX + "a&target=other#frag%20?x=/y",
    PREFIX + "<!channel> ünï",
    PREFIX + "l" * 60,  # 63 bytes: PostgreSQL's longest name
)


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture
def hostile(cluster):
    for name in NAMES:
        cluster.execute(f"CREATE DATABASE {quoted(name)}")
    yield cluster
    for name in NAMES:
        cluster.execute(f"DROP DATABASE IF EXISTS {quoted(name)} WITH (FORCE)")


def test_hostile_database_names_survive_sd_sharding_and_probes(hostile, tmp_path: Path):
    config = parse_config(f"collectors: []\ntargets:\n  prod:\n    dsn: {hostile.dsn()}\n"
                          f"    databases: ['{PREFIX}*']\n"
                          "queries:\n  - {name: q, sql: \"SELECT 1 AS x\", metrics: {x: {}}}\n")
    server = start_server(config)
    try:
        with urllib.request.urlopen(server.url + "/sd", timeout=30) as answer:
            groups = json.load(answer)
        found = sorted(name for g in groups if (name := g["labels"]["__meta_pgvigil_datname"]).startswith(PREFIX))
        assert found == sorted(NAMES)
        # the fleet's shard relabeling, one shard of one: every target kept, the hash over hostile text
        topology = Topology(shards=1)
        scrape = {"job_name": "pgvigil", "http_sd_configs": [{"url": server.url + "/sd", "refresh_interval": "1s"}],
                  "relabel_configs": shard_relabeling(topology, 0)}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"},
                                                                 "scrape_configs": [scrape]}))
        binary = stack.find_binary(stack.PROMETHEUS_BINARIES)
        prometheus = stack._launch("prometheus", tmp_path, False, lambda port: [  # noqa: SLF001 (our own config)
            binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}"])
        try:
            deadline = time.monotonic() + 60
            result: list[dict] = []
            while time.monotonic() < deadline:
                result = [r for r in prometheus.query('q_x{job="pgvigil"}')
                          if r["metric"].get("datname", "").startswith(PREFIX)]
                if len(result) == len(NAMES):
                    break
                time.sleep(0.5)
            assert sorted(r["metric"]["datname"] for r in result) == found, prometheus.log()
            assert sorted(r["metric"]["instance"] for r in result) == sorted(f"prod/{n}" for n in found)
            ups = [r for r in prometheus.query('up{job="pgvigil"}')
                   if r["metric"]["instance"].startswith("prod/" + PREFIX)]
            assert len(ups) == len(found) and all(r["value"][1] == "1" for r in ups), ups
        finally:
            prometheus.stop()
    finally:
        server.stop()
