"""exporter.dev.processes and what rests on it: servers stopped with a bounded wait and SIGKILL after it,
clusters that leave no directory whichever way they end, and the suite's own check of what its tests
leave behind (tests/conftest.py). Real processes throughout."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SUITE_TMP_PREFIX, processes_using, wait_until

from exporter.dev import processes
from exporter.dev.throwaway import ThrowawayCluster

ROOT = Path(__file__).resolve().parents[1]


def test_a_session_that_ignores_sigterm_is_killed_after_the_grace():
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait"], start_new_session=True)
    try:
        wait_until(lambda: len(processes.session_members(stubborn.pid)) == 3, 10, "sh and its two children")
        began = time.monotonic()
        assert processes.stop_session(stubborn.pid, signal.SIGTERM, grace=1.0) == []
        assert 1.0 <= time.monotonic() - began < 5
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()


def test_the_callers_own_session_is_never_signalled():
    with pytest.raises(ValueError, match=r"^refusing to signal session \d+: it is the caller's own or init's$"):
        processes.stop_session(os.getsid(0))


def test_a_cluster_that_fails_to_start_leaves_no_directory():
    cluster = ThrowawayCluster(settings={"pgvigil_no_such_setting": "1"}, preload=())
    base = cluster.base
    with pytest.raises(subprocess.CalledProcessError):
        with cluster:
            pass
    assert not base.exists()
    assert cluster not in processes.tracked()


def test_a_server_deaf_to_pg_ctl_is_killed_and_its_directory_removed():
    cluster = ThrowawayCluster(preload=()).start()
    postmaster = cluster.postmaster_pid()
    assert postmaster is not None and len(cluster.server_processes()) > 1  # with its background workers
    os.kill(postmaster, signal.SIGSTOP)  # pg_ctl's stop request now goes unanswered
    began = time.monotonic()
    assert cluster.cleanup() == []
    assert time.monotonic() - began < 30
    assert processes.session_members(postmaster) == [] and not cluster.base.exists()


def test_a_program_that_never_cleans_up_its_cluster_leaves_nothing_at_exit(tmp_path):
    program = ("from exporter.dev.throwaway import ThrowawayCluster\n"
               "print(ThrowawayCluster(preload=()).start().base, flush=True)\n")
    ran = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    base = Path(ran.stdout.strip())
    assert base.name.startswith("pgvigil-pg-") and not base.exists()
    assert processes_using(base) == []


def test_the_suite_fails_naming_what_a_test_left_and_removes_it(tmp_path):
    """A run of one test that leaves a directory and a running cluster: it passes, the run fails."""
    (tmp_path / "test_leaky.py").write_text(
        "import tempfile\n"
        "from exporter.dev.throwaway import ThrowawayCluster\n\n"
        "def test_leaks():\n"
        "    tempfile.mkdtemp(prefix='pgvigil-leaky-')\n"
        "    ThrowawayCluster(preload=()).start()\n")
    ran = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
                          "--basetemp", str(tmp_path / "basetemp"), "test_leaky.py"], cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")), capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "1 passed" in ran.stdout
    left = ran.stdout[ran.stdout.index("the test run left these behind (now removed)"):]
    cluster = re.search(r"^not cleaned up by its test: ThrowawayCluster\((/\S+)\)$", left, re.M)
    leaky = re.search(r"^left in the temporary directory: (/\S+/pgvigil-leaky-\S+) \(\d+\.\d MB\)$", left, re.M)
    assert cluster and leaky, left
    run_dir = Path(leaky.group(1)).parent  # that run's own directory, inside this run's
    assert run_dir.name.startswith(SUITE_TMP_PREFIX) and run_dir.parent == Path(tempfile.gettempdir())
    assert not run_dir.exists() and not Path(cluster.group(1)).exists()
    assert processes_using(Path(cluster.group(1))) == []
