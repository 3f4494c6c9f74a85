"""VictoriaMetrics, vmalert and vmagent (Debian package `victoria-metrics`) started for tests and benchmarks.

Each runs like the Prometheus and Alertmanager of `stack`: its own session, a free loopback port, a bounded
wait for readiness (`/-/ready` answers 200 on all three), stopped with SIGTERM then SIGKILL.
"""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from exporter.dev import stack

VICTORIA_METRICS = ("victoria-metrics", "victoria-metrics-prod")
VMALERT = ("vmalert", "vmalert-prod")
VMAGENT = ("vmagent", "vmagent-prod")


def installed() -> bool:
    """Whether the three binaries are on PATH (scripts/test.sh installs them)."""
    try:
        for names in (VICTORIA_METRICS, VMALERT, VMAGENT):
            stack.find_binary(names)
    except stack.StackError:
        return False
    return True


def start_victoria_metrics(workdir: Path | None = None, extra: Sequence[str] = ()) -> stack.Service:
    """A single-node VictoriaMetrics whose data lives in `workdir`; old timestamps are accepted (retention
    100 years) and query results are not cached, so data imported a moment ago answers at once."""
    binary = stack.find_binary(VICTORIA_METRICS)
    workdir, owns = stack._workdir(workdir, "victoria-metrics")  # noqa: SLF001 (the same helper as Prometheus')
    return stack._launch("victoria-metrics", workdir, owns, lambda port: [  # noqa: SLF001
        binary, f"-storageDataPath={workdir / 'data'}", f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y", "-search.disableCache", "-loggerLevel=WARN", *extra])


def start_vmalert(datasource: str, rule_files: Sequence[Path], notifiers: Sequence[str],
                  workdir: Path | None = None, extra: Sequence[str] = ()) -> stack.Service:
    """vmalert evaluating `rule_files` against `datasource`, notifying every Alertmanager in `notifiers` and
    writing recording rules' results and alert state back to the datasource."""
    binary = stack.find_binary(VMALERT)
    workdir, owns = stack._workdir(workdir, "vmalert")  # noqa: SLF001
    return stack._launch("vmalert", workdir, owns, lambda port: [  # noqa: SLF001
        binary, f"-httpListenAddr=127.0.0.1:{port}", f"-datasource.url={datasource}",
        f"-remoteWrite.url={datasource}", f"-remoteRead.url={datasource}",
        *[f"-rule={Path(path).resolve()}" for path in rule_files],
        *[f"-notifier.url={url}" for url in notifiers], "-loggerLevel=WARN", *extra])


def start_vmagent(config_path: Path, remote_write: str, member: int, members: int,
                  workdir: Path | None = None, extra: Sequence[str] = ()) -> stack.Service:
    """vmagent scraping `config_path`'s jobs, member `member` of `members` (cluster sharding)."""
    binary = stack.find_binary(VMAGENT)
    workdir, owns = stack._workdir(workdir, "vmagent")  # noqa: SLF001
    return stack._launch("vmagent", workdir, owns, lambda port: [  # noqa: SLF001
        binary, f"-httpListenAddr=127.0.0.1:{port}", f"-promscrape.config={Path(config_path).resolve()}",
        f"-remoteWrite.url={remote_write}/api/v1/write", f"-remoteWrite.tmpDataPath={workdir / 'queue'}",
        f"-promscrape.cluster.membersCount={members}", f"-promscrape.cluster.memberNum={member}",
        "-loggerLevel=WARN", *extra])


def import_text(service: stack.Service, text: str) -> None:
    """Import samples in the Prometheus text format with millisecond timestamps, visible to queries on return."""
    request = urllib.request.Request(service.url + "/api/v1/import/prometheus", data=text.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        answer.read()
    with urllib.request.urlopen(service.url + "/internal/force_flush", timeout=60) as answer:
        answer.read()


def query(service: stack.Service, expr: str, at: float, step: str = "5m") -> dict:
    """An instant query the way vmalert sends it (`step` is its `-datasource.queryStep`, the look-back);
    the whole answer, so a parse error (status `error`) is the caller's to judge."""
    params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}", "step": step, "nocache": "1"})
    try:
        with urllib.request.urlopen(f"{service.url}/api/v1/query?{params}", timeout=60) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as err:  # 422 and 400 carry the engine's message as JSON
        return json.loads(err.read() or b"{}") | {"status": "error"}
