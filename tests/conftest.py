"""Shared fixtures: one real throwaway PostgreSQL cluster per server version for the session.

`cluster` is the machine's PostgreSQL (Debian's 15 on CI). Tests that must hold on every supported
major request `major_cluster` instead (or override `cluster` with it in their module): it is
parametrized over 13-18 and each major's cluster starts once per session.
"""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from exporter.dev import stack
from exporter.dev.servers import SUPPORTED_MAJORS, server_bindir
from exporter.dev.throwaway import ThrowawayCluster
from exporter.pgbin import find_bindir

if TYPE_CHECKING:
    from exporter.config import Config


@pytest.fixture(scope="session")
def clusters() -> Iterator[Callable[[Path], ThrowawayCluster]]:
    """Started clusters by bin directory: each starts on first use and stops at the end of the session."""
    started: dict[Path, ThrowawayCluster] = {}

    def get(bindir: Path) -> ThrowawayCluster:
        key = bindir.resolve()
        if key not in started:
            pg = ThrowawayCluster(settings={"max_connections": "200"}, bindir=bindir)
            started[key] = pg  # registered before start, so a failed start is still cleaned up
            pg.start()
            pg.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return started[key]

    yield get
    for pg in started.values():
        pg.cleanup()


@pytest.fixture(scope="session")
def cluster(clusters):
    """A real PostgreSQL cluster with pg_stat_statements preloaded, shared by the whole session."""
    return clusters(find_bindir())


@pytest.fixture(scope="session", params=SUPPORTED_MAJORS, ids=lambda major: f"pg{major}")
def major(request) -> int:
    """Each supported PostgreSQL major in turn; tests using it are grouped by major by pytest."""
    return request.param


@pytest.fixture(scope="session")
def major_cluster(clusters, major) -> ThrowawayCluster:
    """The cluster of `major` (fetched on first use; a server that cannot be fetched fails, never skips)."""
    return clusters(server_bindir(major))


@pytest.fixture
def fresh_db(cluster):
    """A new, empty database in the shared cluster; returns its superuser DSN."""
    name = "t_" + uuid.uuid4().hex[:10]
    dsn = cluster.create_database(name)
    yield dsn
    cluster.execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )
    cluster.execute(f'DROP DATABASE IF EXISTS "{name}"')


def config_for(dsns: dict[str, str] | str, queries: str = "", extra: str = "") -> "Config":
    """A config with the given target DSNs (name -> DSN), no shipped packs, and `queries` as YAML list items."""
    from exporter.config import parse_config

    if isinstance(dsns, str):
        dsns = {"db": dsns}
    targets = "".join(f"  {name}:\n    dsn: {dsn}\n" for name, dsn in dsns.items())
    body = f"collectors: []\ntargets:\n{targets}{extra}\n"
    if queries:
        body += "queries:\n" + queries
    return parse_config(body, source="test.yaml")


def parse_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples of an exposition, parsed back with prometheus_client's parser: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels) -> float | None:
    """The value of the one sample of `name` whose labels include `labels` (None when absent)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{len(found)} samples of {name} match {labels}"
    return found[0] if found else None


# Live alerting tests need both servers; scripts/test.sh installs them with apt.
requires_prometheus_stack = pytest.mark.skipif(
    not (any(map(shutil.which, stack.PROMETHEUS_BINARIES)) and any(map(shutil.which, stack.ALERTMANAGER_BINARIES))),
    reason="prometheus/alertmanager not installed (scripts/test.sh installs them)",
)


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `check` every half second until it returns something true; that result, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def run():
    """A factory of runners on a fake server (tests/scrape/fake_session.py), closed at the end of the test."""
    from exporter.scrape.runner import Runner

    runners: list[Runner] = []

    def make(conf: "Config", server) -> Runner:
        runners.append(Runner(conf, session_factory=server.factory))
        return runners[-1]

    yield make
    for runner in runners:
        runner.close()
