"""The fleet topology on real binaries: two Prometheus shards, VictoriaMetrics, vmalert, two Alertmanagers.

A throwaway PostgreSQL with DATABASES databases; one pgvigil discovering them (`databases:` target, /sd);
two Prometheus shards with the configs `pgvigil bundle --fleet` generates (hashmod on the /sd targets,
each watching the other, remote write to VictoriaMetrics); vmalert with the generated rule files and
the fleet alerts against VictoriaMetrics, notifying both Alertmanagers, which gossip as a pair and page a
webhook. Only addresses and waits differ from deploy/fleet/ (loopback ports, seconds instead of minutes).

Shard 1 is killed (SIGKILL): its share of the series stops arriving, PostgresMonitoringShareMissing and
PostgresMonitoringShardDown page once each; it is restarted on its own data: its share comes back, the
alert resolves, and the raw samples in VictoriaMetrics show one gap, no longer than the outage.
"""
from __future__ import annotations

import json
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import requires_prometheus_stack, wait_until

from exporter.bundle import alertmanager, fleet, load_inputs
from exporter.config import parse_config
from exporter.dev import stack, victoria
from exporter.dev.throwaway import ThrowawayCluster
from exporter.server import start_server

ROOT = Path(__file__).resolve().parents[2]
DATABASES = 52
PREFIX = "fleet_"
INTERVAL = 2.0  # seconds between scrapes (and rule evaluations)

pytestmark = [requires_prometheus_stack,
              pytest.mark.skipif(not victoria.installed(), reason="victoria-metrics not installed "
                                 "(scripts/test.sh installs it)")]


def launch(name: str, argv: list[str], port: int, workdir: Path) -> stack.Service:
    """A service on a port chosen beforehand (the topology names every address before anything starts)."""
    workdir.mkdir(parents=True, exist_ok=True)
    service = stack.Service(name, argv, port, workdir, owns_workdir=False)
    try:
        service.wait_ready()
    except BaseException:
        service.stop()
        raise
    return service


class Fleet:
    """Every process of the topology, started in dependency order, stopped in reverse."""

    def __init__(self, root: Path, pgvigil_address: str, webhook_url: str) -> None:
        self.root, self.pgvigil_address, self.webhook_url = root, pgvigil_address, webhook_url
        self.ports = {name: stack.free_port() for name in ("vmalert", "p0", "p1", "am0", "am1", "g0", "g1")}
        self.services: dict[str, stack.Service] = {}
        self.topology = fleet.Topology()

    def start(self) -> None:
        self.services["vm"] = victoria.start_victoria_metrics(self.root / "vm", extra=[
            "-search.latencyOffset=1s"])  # by default the last 30 s are hidden from queries
        ports = self.ports
        self.topology = fleet.Topology(
            shards=2, pgvigil=(self.pgvigil_address,),
            shard_addresses=(f"127.0.0.1:{ports['p0']}", f"127.0.0.1:{ports['p1']}"),
            victoria_metrics=self.services["vm"].url, vmalert=f"127.0.0.1:{ports['vmalert']}",
            alertmanagers=(f"http://127.0.0.1:{ports['am0']}", f"http://127.0.0.1:{ports['am1']}"),
            alertmanager_peers=(f"127.0.0.1:{ports['g0']}", f"127.0.0.1:{ports['g1']}"), gossip_host="127.0.0.1",
            rules_dir=str(self.root / "rules"), scrape_interval=f"{INTERVAL:.0f}s", sd_refresh="1s",
            evaluation_interval=f"{INTERVAL:.0f}s", shard_down_for="0s", share_missing_for="0s", share_window="10m")
        rules_dir = self.root / "rules"
        rules_dir.mkdir(parents=True)
        for name in fleet.RULE_FILES:
            (rules_dir / name).write_text((ROOT / "alerts" / name).read_text())
        files = fleet.render(load_inputs(None, None), self.topology)
        (rules_dir / fleet.ALERTS_FILE).write_text(files[fleet.ALERTS_FILE])
        am_config = self.root / "alertmanager.yml"
        am_config.write_text(alertmanager.render(alertmanager.webhook_config(self.webhook_url)))

        am = stack.find_binary(stack.ALERTMANAGER_BINARIES)
        for i in (0, 1):
            port = ports[f"am{i}"]
            self.services[f"am{i}"] = launch(f"alertmanager-{i}", [
                am, *fleet.alertmanager_args(self.topology, i, str(am_config)),
                f"--storage.path={self.root / f'am{i}' / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.settle-timeout=2s"], port, self.root / f"am{i}")
        for i in (0, 1):
            self.start_shard(i)
        port = ports["vmalert"]
        self.services["vmalert"] = launch("vmalert", [
            stack.find_binary(victoria.VMALERT), *fleet.vmalert_args(self.topology),
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-datasource.queryStep={INTERVAL * 2:.0f}s",  # the look-back: 5m in production, two scrapes here
            "-loggerLevel=WARN"], port, self.root / "vmalert")

    def start_shard(self, index: int) -> stack.Service:
        workdir = self.root / f"shard{index}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(fleet.shard_config(self.topology, index), sort_keys=False))
        port = self.ports[f"p{index}"]
        service = launch(f"prometheus-{index}", [
            stack.find_binary(stack.PROMETHEUS_BINARIES), f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"], port, workdir)
        self.services[f"p{index}"] = service
        return service

    def kill_shard(self, index: int) -> None:
        service = self.services.pop(f"p{index}")
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(timeout=10)
        service.stop()

    def stop(self) -> None:
        for name in reversed(list(self.services)):
            self.services.pop(name).stop()


@pytest.fixture(scope="module")
def postgres():
    with ThrowawayCluster() as pg:
        for i in range(DATABASES):
            pg.execute(f"CREATE DATABASE {PREFIX}{i:02d}")
        yield pg


@pytest.fixture(scope="module")
def pgvigil(postgres):
    config = parse_config(
        "collectors: []\n"
        f"targets:\n  prod:\n    dsn: {postgres.dsn()}\n    databases: ['{PREFIX}*']\n"
        "queries:\n  - {name: fleet_probe, sql: \"SELECT 1 AS up\", metrics: {up: {}}}\n")
    server = start_server(config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def webhook():
    with stack.WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def topology(tmp_path_factory, pgvigil, webhook):
    running = Fleet(tmp_path_factory.mktemp("fleet"), pgvigil.url.removeprefix("http://"), webhook.url)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def vm_query(running: Fleet, expr: str) -> list[dict]:
    answer = victoria.query(running.services["vm"], expr, time.time(), step=f"{INTERVAL * 2:.0f}s")
    assert answer.get("status") == "success", answer
    return answer["data"]["result"]


def shares(running: Fleet) -> dict[str, set[str]]:
    """shard -> the discovered databases whose series reach VictoriaMetrics now through it."""
    found: dict[str, set[str]] = {}
    for sample in vm_query(running, 'fleet_probe_up{job="pgvigil"}'):
        found.setdefault(sample["metric"]["shard"], set()).add(sample["metric"]["datname"])
    return found


def raw_timestamps(running: Fleet, selector: str, start: float) -> list[float]:
    """The timestamps of the raw samples VictoriaMetrics holds for one series since `start`."""
    params = urllib.parse.urlencode({"match[]": selector, "start": f"{start:.0f}"})
    with urllib.request.urlopen(f"{running.services['vm'].url}/api/v1/export?{params}", timeout=30) as answer:
        lines = [json.loads(line) for line in answer.read().splitlines() if line.strip()]
    assert len(lines) == 1, f"{selector}: {len(lines)} series"
    return [stamp / 1000 for stamp in lines[0]["timestamps"]]


def notified(webhook: stack.WebhookReceiver, alertname: str, status: str) -> list[dict]:
    return [alert for note in webhook.notifications for alert in note.get("alerts", [])
            if alert["labels"].get("alertname") == alertname and alert["status"] == status]


def test_fleet_splits_the_databases_and_survives_a_shard_outage(topology, webhook):
    everything = {f"{PREFIX}{i:02d}" for i in range(DATABASES)}

    def complete() -> dict[str, set[str]] | None:
        found = shares(topology)
        return found if set().union(*found.values()) >= everything else None

    before = wait_until(complete, 120, f"series of all {DATABASES} databases in VictoriaMetrics")
    # the paging path's own series reach the global view, each program scraped by one shard: the monitoring
    # alerts on the pair (members), vmalert (rules, notifier, reload) read them
    components = {urllib.parse.urlsplit(url).netloc for url in topology.topology.alertmanagers} | {
        topology.topology.vmalert, urllib.parse.urlsplit(topology.topology.victoria_metrics).netloc}

    def up_components() -> dict[str, str] | None:
        found = {s["metric"]["instance"]: s["metric"]["shard"]
                 for s in vm_query(topology, f'up{{job="{fleet.MONITORING_JOB}"}} == 1')}
        return found if set(found) == components else None

    scraped = wait_until(up_components, 60, "vmalert, both Alertmanagers and VictoriaMetrics scraped")
    assert len(vm_query(topology, f'up{{job="{fleet.MONITORING_JOB}"}}')) == len(components) == len(scraped) == 4
    members = wait_until(lambda: vm_query(topology, "alertmanager_cluster_members") or None, 60, "the pair's size")
    assert [int(s["value"][1]) for s in members] == [2, 2]
    assert vm_query(topology, "vmalert_config_last_reload_successful == 1")
    assert vm_query(topology, "vmalert_alerts_send_errors_total")  # one per Alertmanager: the notifier alert's input
    assert vm_query(topology, "vmalert_alerting_rules_error")  # one per alerting rule: the rule alert's input
    targets = {sample["metric"]["shard"]: int(sample["value"][1])
               for sample in vm_query(topology, 'count by (shard) (up{job="pgvigil"})')}
    # the hashmod split: both shards scrape, and no database is scraped twice
    assert set(before) == {"0", "1"} and before["0"] and before["1"]
    assert not before["0"] & before["1"]
    lost = before["1"] - {"postgres"}
    one_lost = sorted(lost)[0]
    assert not notified(webhook, "PostgresMonitoringShareMissing", "firing")

    killed = time.time()
    topology.kill_shard(1)
    # shard 1's share goes missing; shard 0's stays
    wait_until(lambda: "1" not in shares(topology), 60, "shard 1's series to go missing in VictoriaMetrics")
    assert shares(topology)["0"] == before["0"]
    wait_until(lambda: notified(webhook, "PostgresMonitoringShareMissing", "firing"), 90,
               "PostgresMonitoringShareMissing paged through vmalert and the Alertmanager pair")
    paged = time.time()
    wait_until(lambda: notified(webhook, "PostgresMonitoringShardDown", "firing"), 90,
               "PostgresMonitoringShardDown paged")
    share_alerts = notified(webhook, "PostgresMonitoringShareMissing", "firing")
    assert {a["labels"]["shard"] for a in share_alerts} == {"1"}
    assert len(share_alerts) == 1, "two Alertmanagers: the page is sent once, not once each"
    assert share_alerts[0]["annotations"]["description"].startswith(f"None of the {targets['1']} pgvigil targets")
    down = notified(webhook, "PostgresMonitoringShardDown", "firing")[0]
    assert down["labels"]["instance"] == topology.topology.shard_address(1) and down["labels"]["shard"] == "0"

    topology.start_shard(1)
    restarted = time.time()  # ready again: from here on only service discovery and the first scrape are left
    wait_until(lambda: shares(topology).get("1") == before["1"], 90, "shard 1's share back in VictoriaMetrics")
    wait_until(lambda: notified(webhook, "PostgresMonitoringShareMissing", "resolved"), 90,
               "PostgresMonitoringShareMissing resolved")
    time.sleep(INTERVAL * 2)

    # the gap in VictoriaMetrics is the outage window, nothing more: before it and after it, one sample a scrape
    stamps = raw_timestamps(topology, f'fleet_probe_up{{datname="{one_lost}"}}', killed - 60)
    gaps = sorted(((b - a), a) for a, b in zip(stamps, stamps[1:]))
    largest, at = gaps[-1]
    outage = restarted - killed
    # after the outage: /sd read again (1 s), a first scrape (INTERVAL), remote write's batch (up to 5 s)
    assert at <= killed + 0.5 and largest <= outage + 10, f"gap of {largest:.1f}s at {at - killed:+.1f}s"
    assert largest >= outage - INTERVAL
    assert all(gap <= INTERVAL * 2.5 for gap, _ in gaps[:-1]), gaps[-3:]
    print(f"fleet: {targets} targets per shard; paged {paged - killed:.1f}s after the kill; outage {outage:.1f}s, "
          f"largest gap {largest:.1f}s")
    # shard 0's databases never had a gap
    kept = sorted(before["0"] - {"postgres"})[0]
    stamps = raw_timestamps(topology, f'fleet_probe_up{{datname="{kept}"}}', killed - 60)
    assert max(b - a for a, b in zip(stamps, stamps[1:])) <= INTERVAL * 2.5


def test_vmagent_members_split_the_databases_instead_of_shards(pgvigil, tmp_path):
    """The vmagent alternative: two members with the generated scrape config and cluster flags."""
    with victoria.start_victoria_metrics(tmp_path / "vm", extra=["-search.latencyOffset=1s"]) as vm:
        topology = fleet.Topology(pgvigil=(pgvigil.url.removeprefix("http://"),), victoria_metrics=vm.url,
                                  scrape_interval=f"{INTERVAL:.0f}s", sd_refresh="1s")
        config = tmp_path / "vmagent-scrape.yml"
        config.write_text(yaml.safe_dump(fleet.vmagent_scrape_config(topology), sort_keys=False))
        agents = []
        try:
            for member in (0, 1):
                port = stack.free_port()
                agents.append(launch(f"vmagent-{member}", [
                    stack.find_binary(victoria.VMAGENT), *fleet.vmagent_args(topology, member, str(config)),
                    f"-httpListenAddr=127.0.0.1:{port}", f"-remoteWrite.tmpDataPath={tmp_path / f'q{member}'}",
                    "-remoteWrite.flushInterval=1s", "-loggerLevel=WARN"], port, tmp_path / f"vmagent{member}"))
            everything = {f"{PREFIX}{i:02d}" for i in range(DATABASES)}

            def split() -> dict[str, set[str]] | None:
                answer = victoria.query(vm, 'fleet_probe_up{job="pgvigil"}', time.time(), step="4s")
                found: dict[str, set[str]] = {}
                for sample in answer["data"]["result"]:
                    found.setdefault(sample["metric"]["shard"], set()).add(sample["metric"]["datname"])
                return found if set().union(*found.values()) >= everything else None

            found = wait_until(split, 120, f"series of all {DATABASES} databases through vmagent")
            assert set(found) == {"0", "1"} and not found["0"] & found["1"]
        finally:
            for agent in agents:
                agent.stop()
