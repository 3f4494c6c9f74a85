"""A throwaway PgBouncer in front of a throwaway cluster, for the demo, the stack and the tests.

It runs from its own ini in a temporary directory on a free loopback port (never the Debian
service), with `auth_type = trust` and the connecting user as admin, so its admin console
(`dbname=pgbouncer`) answers SHOW commands. As root it runs as `postgres`: PgBouncer refuses root.
It runs in a session of its own: a terminal's Ctrl-C would be its "safe shutdown", which waits for
its clients (exporter/dev/processes.py); stop() sends SIGTERM, and SIGKILL 3 s later.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from exporter.dev import processes
from exporter.dev.throwaway import SUPERUSER, ThrowawayCluster, free_port


def pgbouncer_binary() -> str | None:
    """The pgbouncer program (Debian's package puts it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


class ThrowawayPgBouncer:
    """pgbouncer with `databases` pointing at `cluster`; everything goes away on cleanup()."""

    def __init__(self, cluster: ThrowawayCluster, pool_size: int = 2, databases: tuple[str, ...] = ("postgres",),
                 port: int | None = None, pool_mode: str = "session") -> None:
        self.cluster = cluster
        self.port = port or free_port()
        self.pool_size = pool_size
        self.databases = databases
        self.pool_mode = pool_mode
        self.base = Path(tempfile.mkdtemp(prefix="pgvigil-pgbouncer-"))
        self.process: subprocess.Popen | None = None
        self.session: int | None = None  # its pid: it leads a session of its own
        self._as_postgres = os.geteuid() == 0
        processes.track(self)

    def __repr__(self) -> str:
        return f"ThrowawayPgBouncer({self.base})"

    def write_ini(self) -> Path:
        dbs = "\n".join(f"{name} = host=127.0.0.1 port={self.cluster.port} dbname={name}" for name in self.databases)
        ini = self.base / "pgbouncer.ini"
        ini.write_text(
            f"[databases]\n{dbs}\n\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.base / 'users.txt'}\n"
            f"admin_users = {SUPERUSER}\nstats_users = {SUPERUSER}\n"
            f"pool_mode = {self.pool_mode}\ndefault_pool_size = {self.pool_size}\nreserve_pool_size = 0\n"
            f"max_client_conn = 100\nlogfile = {self.base / 'pgbouncer.log'}\npidfile = {self.base / 'pgbouncer.pid'}\n"
            "ignore_startup_parameters = extra_float_digits,options\n")
        (self.base / "users.txt").write_text(f'"{SUPERUSER}" ""\n')
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            for path in (self.base, ini, self.base / "users.txt"):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        return ini

    def start(self) -> "ThrowawayPgBouncer":
        binary = pgbouncer_binary()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        ini = self.write_ini()
        # As root: pgbouncer itself as postgres, no runuser in between (which outlives a SIGTERM by 2 s).
        user = "postgres" if self._as_postgres else None
        # Its log goes to logfile and to stderr: a file, as a pipe nobody reads would fill and stall it.
        with open(self.base / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen([binary, str(ini)], cwd=self.base, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                            user=user, group=user, extra_groups=[] if user else None)
        self.session = self.process.pid
        self.wait_ready()
        return self

    def server_processes(self) -> list[int]:
        """The live processes of this PgBouncer: its session."""
        return processes.session_members(self.session) if self.session is not None else []

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.admin_dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process is not None and self.process.poll() is not None:
                    log = self.base / "stderr.log"
                    raise RuntimeError(f"pgbouncer exited: {log.read_text(errors='replace')}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> list[int]:
        """SIGTERM (an immediate shutdown up to PgBouncer 1.22; from 1.23 it waits for the clients), SIGKILL
        after 3 s; returns the processes that survived (none, unless they cannot be signalled)."""
        left: list[int] = []
        if self.process is not None:
            left = processes.stop_session(self.process.pid, signal.SIGTERM, grace=3.0)
            try:
                self.process.wait(5)  # reaped: no zombie left
            except subprocess.TimeoutExpired:
                left = left or [self.process.pid]
        self.process = None
        return left

    def cleanup(self) -> list[int]:
        try:
            return self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            processes.forget(self)

    def __enter__(self) -> "ThrowawayPgBouncer":
        try:
            return self.start()
        except BaseException:
            self.cleanup()  # __exit__ does not run when __enter__ fails
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- access ----------------------------------------------------------
    def admin_dsn(self) -> str:
        """The admin console: the pseudo database `pgbouncer`."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/pgbouncer"

    def dsn(self, dbname: str = "postgres") -> str:
        """A pooled connection to `dbname` through this PgBouncer."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"
