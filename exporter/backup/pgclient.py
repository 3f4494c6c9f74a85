"""How the backup commands talk to PostgreSQL's client programs (pg_dump, pg_restore).

The password never goes on a command line (other users can read argv through
ps): it is taken out of the DSN and handed to the child in PGPASSWORD.
Anything printed is passed through ``Conninfo.redact`` first.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import psycopg2
import psycopg2.extensions

from exporter.pgbin import find_bindir


class BackupError(Exception):
    """A failure the user can act on; the message is printed as is, without a traceback."""


@dataclass(frozen=True)
class Conninfo:
    """A libpq connection string split into the password and everything else."""

    params: Mapping[str, str]
    password: str | None

    @classmethod
    def parse(cls, dsn: str) -> "Conninfo":
        try:
            params = psycopg2.extensions.parse_dsn(dsn)
        except psycopg2.ProgrammingError:
            # psycopg2's message quotes the DSN, password included: do not pass it on.
            raise BackupError("the DSN is not a valid PostgreSQL connection string") from None
        password = params.pop("password", None)
        return cls(params=params, password=password)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or os.environ.get("PGDATABASE", "")

    def without_password(self, **override: str) -> str:
        """A key=value conninfo safe to put on argv, optionally pointing elsewhere (another dbname)."""
        return psycopg2.extensions.make_dsn(**{**self.params, **override})

    def connect(self, **override: str) -> "psycopg2.extensions.connection":
        kwargs = {**self.params, **override}
        if self.password is not None:
            kwargs["password"] = self.password
        try:
            return psycopg2.connect(**kwargs)
        except psycopg2.Error as exc:
            raise BackupError(f"cannot connect to {self.describe(**override)}: {self.redact(str(exc)).strip()}") from None

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
        if self.password:
            text = text.replace(self.password, "***")
        return text


def client_program(name: str) -> str:
    """Path to pg_dump/pg_restore: the newest Debian PostgreSQL bindir, $PGVIGIL_PG_BINDIR, or PATH."""
    try:
        candidate = find_bindir() / name
        if candidate.exists():
            return str(candidate)
    except RuntimeError:
        pass
    found = shutil.which(name)
    if found:
        return found
    raise BackupError(f"{name} not found: install the PostgreSQL client programs or set PGVIGIL_PG_BINDIR")


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
