"""Throwaway PostgreSQL clusters for the demo, the benchmarks and the tests.

A cluster lives in a temporary directory, listens on loopback only and is
removed on stop. When run as root (CI), the server runs as the ``postgres``
system user because PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import psycopg

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

    # -- process control -------------------------------------------------
    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # cwd: the postgres user may not be able to enter the caller's directory (a clone under /root),
        # and initdb cannot find its own binaries from a directory it cannot read.
        return subprocess.run(cmd, check=check, capture_output=True, text=True, cwd=self.base)

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
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start")
        self.wait_ready()
        return self

    @classmethod
    def standby_of(cls, primary: "ThrowawayCluster", slot: str) -> "ThrowawayCluster":
        """A started hot standby streaming from `primary` through a new physical slot (pg_basebackup -R)."""
        standby = cls(preload=(), bindir=primary.bindir)
        standby.server_owned_dir(standby.base)
        standby._run("pg_basebackup", "-D", str(standby.datadir), "-h", "127.0.0.1", "-p", str(primary.port),
                     "-U", SUPERUSER, "-R", "-X", "stream", "-C", "-S", slot, "-c", "fast")
        # The copied postgresql.conf still names the primary's port and socket directory; later lines win.
        with open(standby.datadir / "postgresql.conf", "a") as conf:
            conf.write(f"\n# pgvigil standby\nport = {standby.port}\n"
                       f"unix_socket_directories = '{standby.base}'\narchive_mode = off\n")
        return standby.start()

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

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "ThrowawayCluster":
        return self.start()

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
