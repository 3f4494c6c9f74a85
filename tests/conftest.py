"""Shared fixtures: one real throwaway PostgreSQL cluster per server version for the session.

`cluster` is the machine's PostgreSQL (Debian's 15 on CI). Tests that must hold on every supported
major request `major_cluster` instead (or override `cluster` with it in their module): it is
parametrized over 13-18 and each major's cluster starts once per session.

Where the suite writes: each run's temporary files (throwaway clusters, PgBouncers, Prometheus and
Alertmanager, the demo, every `tempfile` use) go into one directory, /tmp/pgvigil-tests-XXXXXXXX, made
the run's TMPDIR, which the run removes at its end, after listing what its tests left there: any
`pgvigil-*` entry fails the run, as does a cluster, PgBouncer or service no test cleaned up, or a
process still running from there (stopped then). pytest's own tmp_path stays where pytest keeps it.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from exporter.dev import processes, stack
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


@pytest.fixture(autouse=True)
def process_logging_restored() -> Iterator[None]:
    """A CLI command run in-process (CliRunner) sets up logging for the whole process (exporter.logs:
    the root logger's level, a handler on the stderr of that test): both are undone after each test, so a
    later test's caplog still hears warnings."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)
    for handler in [h for h in root.handlers if type(h) is logging.StreamHandler]:  # not pytest's own
        root.removeHandler(handler)


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


# -- where the suite writes, and what it leaves ------------------------------------------------------

SUITE_TMP_PREFIX = "pgvigil-tests-"


@dataclass
class SuiteTmp:
    """This run's temporary directory, and what to say about /tmp at the end."""

    root: Path
    system_tmp: Path
    tmpdir_env: str | None  # TMPDIR before the run
    removed: list[str]  # directories of killed runs removed at the start
    before: set[str]  # the pgvigil-* names in system_tmp at the start


_suite: list[SuiteTmp] = []


def pytest_configure(config) -> None:
    """Every tempfile of this run, ours and the servers' (TMPDIR), in one directory of its own."""
    if _suite:
        return
    system_tmp = Path(tempfile.gettempdir())
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(system_tmp))  # pytest's tmp_path stays where pytest keeps it
    removed = remove_dead_runs(system_tmp)
    root = Path(tempfile.mkdtemp(prefix=SUITE_TMP_PREFIX, dir=system_tmp))
    root.chmod(0o1777)  # like /tmp: the postgres user (the servers' own, as root) makes files there too
    (root / ".owner").write_text(str(os.getpid()))
    _suite.append(SuiteTmp(root, system_tmp, os.environ.get("TMPDIR"), removed,
                           {entry.name for entry in system_tmp.glob("pgvigil-*")}))
    os.environ["TMPDIR"] = tempfile.tempdir = str(root)


@pytest.hookimpl(hookwrapper=True)
def pytest_sessionfinish(session, exitstatus):
    """After every fixture's teardown: what the run left, loudly, and then nothing."""
    yield
    if not _suite:
        return
    suite = _suite.pop()
    problems, notes = suite_leftovers(suite)
    shutil.rmtree(suite.root, ignore_errors=True)
    tempfile.tempdir = None
    if suite.tmpdir_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = suite.tmpdir_env
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for title, lines, red in (("the test run left these behind (now removed)", problems, True),
                              ("temporary files", notes, False)):
        if lines and reporter is not None:
            reporter.write_sep("=", title, red=red, bold=True)
            for line in lines:
                reporter.write_line(line)
    if problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def remove_dead_runs(system_tmp: Path) -> list[str]:
    """The directories of earlier runs killed before their end, removed when no process uses them."""
    removed = []
    for stale in system_tmp.glob(SUITE_TMP_PREFIX + "*"):
        try:
            owner = int((stale / ".owner").read_text())
        except (OSError, ValueError):
            continue
        if not processes.alive(owner) and not processes_using(stale):
            removed.append(f"{stale} ({disk_usage(stale) / 1e6:.1f} MB), left by a killed run (pid {owner})")
            shutil.rmtree(stale, ignore_errors=True)
    return removed


def suite_leftovers(suite: SuiteTmp) -> tuple[list[str], list[str]]:
    """(problems, notes) about what the run left; stops what still runs (stray servers, processes)."""
    problems = [f"not cleaned up by its test: {thing}" for thing in processes.cleanup_all()]
    for pid in processes_using(suite.root):
        problems.append(f"a process still running from {suite.root}: {processes.describe(pid)}")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    notes = [f"removed {line}" for line in suite.removed]
    notes += [f"made in {suite.system_tmp} during this run, by it or by another program: {entry}"
              for entry in sorted(suite.system_tmp.glob("pgvigil-*"))
              if entry.name not in suite.before and not entry.name.startswith(SUITE_TMP_PREFIX)]
    for entry in sorted(suite.root.iterdir()):
        if entry.name == ".owner":
            continue
        line = f"{entry} ({disk_usage(entry) / 1e6:.1f} MB)"
        if entry.name.startswith("pgvigil-"):
            problems.append(f"left in the temporary directory: {line}")
        else:
            notes.append(f"left by a program the tests ran: {line}")
    return problems, notes


def processes_using(root: Path) -> list[int]:
    """Live processes (this one aside) whose working directory or command line is inside `root`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or not processes.alive(int(entry.name)):
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd == str(root) or cwd.startswith(f"{root}/") or f"{root}/" in cmdline:
            found.append(int(entry.name))
    return found


def disk_usage(path: Path) -> int:
    """Bytes of the files under `path` (or of the file)."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
        return sum(p.lstat().st_size for p in path.rglob("*"))
    except OSError:
        return 0
