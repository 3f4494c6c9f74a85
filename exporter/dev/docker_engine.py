"""A Docker engine and a compose command for the live compose test (tests/e2e/test_compose_live.py).

The engine: the one already answering, or a `dockerd` this process starts as root (Debian's docker.io
has no init system to start it in a container or on CI) and stops again. Compose: the v2 plugin
(`docker compose`, the README's spelling) when present, else the standalone v1 `docker-compose`
(Debian 12's package): docker-compose.yml runs under both.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ENGINE_START_TIMEOUT = 60.0


class EngineUnavailable(Exception):
    """No engine, and none can be started here: the caller decides between skipping and failing."""


class EngineFailed(Exception):
    """An engine should have started and did not: always a failure, with dockerd's log tail."""


def engine_answers(timeout: float = 20.0) -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def could_install_engine() -> bool:
    """Root on Linux with apt: scripts/test.sh installs docker.io, so a missing engine is a defect here."""
    return sys.platform == "linux" and os.geteuid() == 0 and shutil.which("apt-get") is not None


@dataclass
class Engine:
    process: subprocess.Popen[bytes] | None  # None: it was running already, and is left running
    log_path: Path | None

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # dockerd stops its containers and cleans up its mounts
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)


def ensure_engine(log_path: Path) -> Engine:
    """An answering engine; started (logging to `log_path`) when none answers and this is root on Linux."""
    if engine_answers():
        return Engine(None, None)
    if sys.platform != "linux" or os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers, and only root on Linux can start one here")
    dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.access("/usr/sbin/dockerd", os.X_OK) else None)
    if dockerd is None or shutil.which("docker") is None:
        raise EngineUnavailable("dockerd or docker is not installed (Debian: apt-get install docker.io)")
    log = log_path.open("ab")
    # The default data root: the images built for the stack are a cache that outlives this run.
    process = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    log.close()
    engine = Engine(process, log_path)
    deadline = time.monotonic() + ENGINE_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if engine_answers(timeout=5.0):
            return engine
        time.sleep(0.5)
    engine.stop()
    tail = log_path.read_text(errors="replace")[-3000:]
    raise EngineFailed(f"dockerd did not answer within {ENGINE_START_TIMEOUT:.0f}s; its log ({log_path}):\n{tail}")


def compose_command() -> list[str] | None:
    """`docker compose` (v2) if the plugin is there, else `docker-compose` (v1), else None."""
    if shutil.which("docker"):
        plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if plugin.returncode == 0:
            return ["docker", "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None
