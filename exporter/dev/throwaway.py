"""Throwaway PostgreSQL clusters for the demo, the benchmarks and the tests.

A cluster lives in a temporary directory (`pgvigil-pg-*` under $TMPDIR), listens on loopback only
and is removed by cleanup(): the server stopped (immediate shutdown, bounded, SIGKILL after it) and
the directory deleted, also when its start failed. A cluster nobody cleaned up is cleaned up at exit
(exporter.dev.processes). When run as root (CI), the server runs as the ``postgres`` system user
because PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import psycopg

from exporter.dev import processes
from exporter.pgbin import find_bindir

SUPERUSER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayCluster:
    """initdb + pg_ctl in a temporary directory; everything goes away on cleanup()."""

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        preload: Sequence[str] = ("pg_stat_statements",),
        port: int | None = None,
        bindir: Path | None = None,
    ) -> None:
        # bindir: a server of another major (exporter.dev.servers.server_bindir); default: the newest installed.
        self.bindir = bindir or find_bindir()
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.preload = list(preload)
        self.base = Path(tempfile.mkdtemp(prefix="pgvigil-pg-"))
        self.datadir = self.base / "data"
        self.logfile = self.base / "server.log"
        self._as_postgres = os.geteuid() == 0
        processes.track(self)

    def __repr__(self) -> str:
        return f"ThrowawayCluster({self.base})"

    # -- process control -------------------------------------------------
    def _run(self, *argv: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # cwd: the postgres user may not be able to enter the caller's directory (a clone under /root),
        # and initdb cannot find its own binaries from a directory it cannot read.
        # A session of its own: a Ctrl-C in the caller's terminal is the caller's to act on (processes.py);
        # and all of it ends when the caller gives up (a timeout, Ctrl-C): runuser's child too, which
        # subprocess.run's kill() of runuser alone would leave writing into a removed directory.
        with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=self.base, start_new_session=True) as process:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except BaseException:
                processes.stop_session(process.pid, signal.SIGKILL, grace=5.0)
                raise
        done = subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
        if check:
            done.check_returncode()
        return done

    def server_owned_dir(self, path: Path) -> Path:
        """A directory the server process can write (it runs as `postgres` when we are root)."""
        path.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    def init(self) -> "ThrowawayCluster":
        self.server_owned_dir(self.base)
        self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
        }
        if self.preload:
            conf["shared_preload_libraries"] = "'" + ",".join(self.preload) + "'"
        conf.update(self.settings)
        with open(self.datadir / "postgresql.conf", "a") as fh:
            fh.write("\n# pgvigil throwaway cluster\n")
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")
        return self

    def start(self) -> "ThrowawayCluster":
        if not self.datadir.exists():
            self.init()
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start", timeout=90)
        self.wait_ready()
        return self

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (from postmaster.pid, checked against /proc), else None."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:  # the file outlives a crash, and its pid may belong to another process by now
            if processes.alive(pid) and Path(os.readlink(f"/proc/{pid}/cwd")) == self.datadir.resolve():
                return pid
        except OSError:
            pass
        return None

    def server_processes(self) -> list[int]:
        """The live processes of this cluster's server: those working in its directory (each child of the
        postmaster leads a session of its own)."""
        return processes.working_in(self.base)

    @classmethod
    def standby_of(cls, primary: "ThrowawayCluster", slot: str) -> "ThrowawayCluster":
        """A started hot standby streaming from `primary` through a new physical slot (pg_basebackup -R)."""
        standby = cls(preload=(), bindir=primary.bindir)
        try:
            standby.server_owned_dir(standby.base)
            standby._run("pg_basebackup", "-D", str(standby.datadir), "-h", "127.0.0.1", "-p", str(primary.port),
                         "-U", SUPERUSER, "-R", "-X", "stream", "-C", "-S", slot, "-c", "fast")
            # The copied postgresql.conf still names the primary's port and socket directory; later lines win.
            with open(standby.datadir / "postgresql.conf", "a") as conf:
                conf.write(f"\n# pgvigil standby\nport = {standby.port}\n"
                           f"unix_socket_directories = '{standby.base}'\narchive_mode = off\n")
            return standby.start()
        except BaseException:
            standby.cleanup()
            raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast", timeout: int = 60) -> None:
        if (self.datadir / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", str(timeout), "stop",
                          check=False, timeout=timeout + 5)
            except subprocess.TimeoutExpired:
                pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> list[int]:
        """Stop the server (immediate shutdown; SIGKILL what is left 10 + 5 s later) and remove the directory.
        Returns the server's processes that survived (none, unless they cannot be signalled)."""
        left: list[int] = []
        try:
            self.stop("immediate", timeout=10)
            left = processes.stop_processes(self.server_processes, signum=None, grace=5.0)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            processes.forget(self)
        return left

    def __enter__(self) -> "ThrowawayCluster":
        try:
            return self.start()
        except BaseException:
            self.cleanup()  # __exit__ does not run when __enter__ fails
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- access ----------------------------------------------------------
    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        """Run SQL as the superuser in autocommit; returns the rows of the last statement, if any."""
        conn = psycopg.connect(self.dsn(dbname), autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                cur.set_result(-1)  # psycopg stays on the first statement's result
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)
