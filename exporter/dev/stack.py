"""Real Prometheus and Alertmanager processes on loopback, for tests and `pgvigil demo`.

Each launcher picks a free port, writes its config into a temporary directory, starts the Debian
binary (`apt-get install prometheus prometheus-alertmanager`), waits until it answers `/-/ready`
and returns a `Service` handle:

    with start_alertmanager(config_path) as am, WebhookReceiver() as hook:
        with start_prometheus(["127.0.0.1:9187"], [rules], alertmanager_url=am.url) as prom:
            prom.query("pg_up")            # instant query -> list of {"metric", "value"}
            prom.alerts()                  # active alerts from /api/v1/alerts
            hook.wait_for(lambda n: ...)   # Alertmanager notifications received so far

Everything listens on 127.0.0.1 only, and `stop()` (or leaving the `with` block) terminates the
process (SIGTERM, SIGKILL 5 s later) and removes its temporary directory. Each process runs in a
session of its own, so a terminal's Ctrl-C reaches only the program that started it
(exporter/dev/processes.py).
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from exporter.dev import processes

PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("alertmanager", "prometheus-alertmanager")  # Debian renames it
READY_TIMEOUT = 60.0


class StackError(RuntimeError):
    """A service binary is missing, or it did not become ready; the message says which and why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_binary(names: Sequence[str]) -> str:
    """The first of `names` found on PATH, or a StackError saying what to install."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise StackError(
        f"{names[0]} is not installed (looked for {', '.join(names)} on PATH); "
        "on Debian: apt-get install prometheus prometheus-alertmanager"
    )


class Service:
    """A running Prometheus or Alertmanager: `.url`, `.port`, `.workdir`, `.log()`, `.stop()`."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, owns_workdir: bool) -> None:
        self.name, self.port, self.workdir = name, port, workdir
        self.url = f"http://127.0.0.1:{port}"
        self._owns_workdir = owns_workdir
        self._log_path = workdir / f"{name}.log"
        self._log_file = open(self._log_path, "wb")
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=workdir,
                start_new_session=True,
            )
        except BaseException:
            self._log_file.close()
            raise
        processes.track(self)

    def __repr__(self) -> str:
        return f"Service({self.name}, {self.workdir})"

    def server_processes(self) -> list[int]:
        """The live processes of this service: its session."""
        return processes.session_members(self.process.pid)

    def log(self) -> str:
        """Everything the process printed so far (its own log lines)."""
        self._log_file.flush()
        return self._log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once `/-/ready` answers 200; otherwise stop the process and raise with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"{self.name} exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self._fail(f"{self.name} did not become ready within {timeout:.0f}s")

    def _fail(self, message: str) -> None:
        log = self.log()[-3000:]  # read before stop() removes the working directory
        self.stop()
        raise StackError(f"{message}:\n{log}")

    def get_json(self, path: str, **params: str) -> Any:
        """GET an API path and return its `data` (Prometheus) or the whole JSON body."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=10) as answer:
            body = json.loads(answer.read())
        return body.get("data", body) if isinstance(body, dict) else body

    def query(self, expr: str) -> list[dict]:
        """Prometheus instant query: the result vector (each item has `metric` and `value`)."""
        return self.get_json("/api/v1/query", query=expr)["result"]

    def alerts(self) -> list[dict]:
        """Prometheus: active alerts (pending and firing) with labels, annotations and state."""
        return self.get_json("/api/v1/alerts")["alerts"]

    def stop(self) -> list[int]:
        """SIGTERM, SIGKILL 5 s later; returns the processes that survived (none, unless they cannot be signalled)."""
        try:
            left = processes.stop_session(self.process.pid, signal.SIGTERM, grace=5.0)
            try:
                self.process.wait(timeout=5)  # reaped: no zombie left
            except subprocess.TimeoutExpired:
                left = left or [self.process.pid]
        finally:
            if not self._log_file.closed:
                self._log_file.close()
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            processes.forget(self)
        return left

    def cleanup(self) -> list[int]:
        return self.stop()

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prometheus_config(
    scrape_targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    alertmanager_url: str | Sequence[str] | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    job: str = "pgvigil",
) -> dict:
    """The prometheus.yml content for scraping `scrape_targets` (host:port or URLs) as `job`."""
    hosts = [_host_port(target) for target in scrape_targets]
    config: dict = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}],
    }
    if alertmanager_url:
        # every Alertmanager of a cluster gets every alert: they deduplicate the notifications themselves
        urls = [alertmanager_url] if isinstance(alertmanager_url, str) else list(alertmanager_url)
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [_host_port(u) for u in urls]}]}]}
    return config


def start_prometheus(
    scrape_targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    alertmanager_url: str | Sequence[str] | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    job: str = "pgvigil",
    workdir: Path | None = None,
    resend_delay: str | None = None,
) -> Service:
    """Start Prometheus scraping `scrape_targets` with `rule_files`, sending alerts to Alertmanager.
    `resend_delay` (Prometheus' default 1m) is how soon an alert Prometheus could not send is sent again."""
    binary = find_binary(PROMETHEUS_BINARIES)
    workdir, owns = _workdir(workdir, "prometheus")
    config = prometheus_config(scrape_targets, rule_files, alertmanager_url, scrape_interval, evaluation_interval, job)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return _launch("prometheus", workdir, owns, lambda port: [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        *([f"--rules.alert.resend-delay={resend_delay}"] if resend_delay else []),
    ])


def start_alertmanager(config_path: Path, workdir: Path | None = None, cluster: Sequence[str] | None = None) -> Service:
    """Start Alertmanager with `config_path`, storage in the temp dir. Clustering is off unless
    `cluster` is given: then its first item is this member's gossip address (host:port), the rest
    its peers' (see start_alertmanager_pair)."""
    binary = find_binary(ALERTMANAGER_BINARIES)
    workdir, owns = _workdir(workdir, "alertmanager")
    gossip = ["--cluster.listen-address="]  # a single instance: no gossip port to collide on
    if cluster:
        gossip = [f"--cluster.listen-address={cluster[0]}", f"--cluster.advertise-address={cluster[0]}",
                  *(f"--cluster.peer={peer}" for peer in cluster[1:]), *CLUSTER_TIMINGS]
    return _launch("alertmanager", workdir, owns, lambda port: [
        binary,
        f"--config.file={Path(config_path).resolve()}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *gossip,
    ])


# A pair on one machine settles in a second: gossip and full state exchange often, and a member
# waits `peer-timeout` per position in the peer list before it sends what an earlier one may have.
PEER_TIMEOUT_SECONDS = 2
CLUSTER_TIMINGS = (f"--cluster.peer-timeout={PEER_TIMEOUT_SECONDS}s", "--cluster.pushpull-interval=5s",
                   "--cluster.gossip-interval=200ms")


def start_alertmanager_pair(config_path: Path, workdir: Path | None = None) -> list[Service]:
    """Two Alertmanagers gossiping on loopback, as the compose stack and docs/paging.md run them:
    each notification is sent once by the pair, and either alone keeps paging. Prometheus must
    send every alert to both (`start_prometheus(alertmanager_url=[a.url for a in pair])`)."""
    gossip = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    pair: list[Service] = []
    try:
        for index in range(2):
            member_dir = None if workdir is None else Path(workdir) / f"alertmanager-{index + 1}"
            pair.append(start_alertmanager(config_path, member_dir, [gossip[index], gossip[1 - index]]))
        wait_for_cluster(pair)
    except BaseException:
        for service in pair:
            service.stop()
        raise
    return pair


def cluster_peers(service: Service) -> int:
    """How many members (itself included) an Alertmanager sees in its cluster."""
    return len(service.get_json("/api/v2/status").get("cluster", {}).get("peers") or [])


def wait_for_cluster(members: Sequence[Service], timeout: float = READY_TIMEOUT) -> None:
    """Return once every member sees all of them; else a StackError with each one's view."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(cluster_peers(member) == len(members) for member in members):
                return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.2)
    raise StackError(f"the Alertmanagers did not form a cluster of {len(members)} within {timeout:.0f}s: "
                     + "; ".join(member.log()[-1000:] for member in members))


def _launch(name: str, workdir: Path, owns: bool, argv_for_port: Callable[[int], list[str]]) -> Service:
    # A free port can be taken between free_port() and the bind: try another one a few times.
    try:
        for attempt in range(3):
            port = free_port()
            service = Service(name, argv_for_port(port), port, workdir, owns_workdir=False)
            try:
                service.wait_ready()
            except StackError as exc:
                if "address already in use" in str(exc) and attempt < 2:
                    continue
                raise
            except BaseException:  # Ctrl-C while it starts: nobody else knows the process yet
                service.stop()
                raise
            service._owns_workdir = owns
            return service
    except BaseException:
        if owns:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


class WebhookReceiver:
    """An HTTP endpoint on 127.0.0.1 that records Alertmanager webhook notifications.

    `.url` is the address to put in a `webhook_configs` receiver; `.notifications` is the list of
    decoded JSON bodies received (each has `status`, `alerts`, `groupLabels`, `receiver`, ...).
    """

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    body = {"invalid_json": True}
                body["_path"] = self.path
                body["_received"] = time.monotonic()  # when it arrived, for tests that time a failover
                with receiver._lock:
                    receiver.notifications.append(body)
                    receiver._lock.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self) -> list[dict]:
        """Every alert of every notification received so far, in arrival order."""
        with self._lock:
            return [alert for note in self.notifications for alert in note.get("alerts", [])]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 60.0) -> dict | None:
        """The first notification matching `predicate`, waiting up to `timeout` seconds; else None."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for note in self.notifications:
                    if predicate(note):
                        return note
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(remaining)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "WebhookReceiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _host_port(target: str) -> str:
    if "://" in target:
        parsed = urllib.parse.urlsplit(target)
        return parsed.netloc
    return target


def _workdir(workdir: Path | None, name: str) -> tuple[Path, bool]:
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return Path(workdir), False
    return Path(tempfile.mkdtemp(prefix=f"pgvigil-{name}-")), True
