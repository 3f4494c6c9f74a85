"""A throwaway PgBouncer in front of a throwaway cluster, for the demo, the stack and the tests.

It runs from its own ini in a temporary directory on a free loopback port (never the Debian
service), with `auth_type = trust` and the connecting user as admin, so its admin console
(`dbname=pgbouncer`) answers SHOW commands. As root it runs as `postgres`: PgBouncer refuses root.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

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
        self._as_postgres = os.geteuid() == 0

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
        cmd = [binary, str(self.write_ini())]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        self.process = subprocess.Popen(cmd, cwd=self.base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.admin_dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process is not None and self.process.poll() is not None:
                    log = (self.base / "pgbouncer.log")
                    raise RuntimeError(f"pgbouncer exited: {log.read_text() if log.exists() else ''}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "ThrowawayPgBouncer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- access ----------------------------------------------------------
    def admin_dsn(self) -> str:
        """The admin console: the pseudo database `pgbouncer`."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/pgbouncer"

    def dsn(self, dbname: str = "postgres") -> str:
        """A pooled connection to `dbname` through this PgBouncer."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"
