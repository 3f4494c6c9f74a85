"""The reader's one connection to its server: the log settings, the names it knows, and (source: sql) the files.

Separate from the scrape's sessions so reading the log never waits for, or delays, a scrape. It runs only
pgvigil's own fixed SQL, so its settings are pinned once, as startup options (which outrank what a tenant
owning the database or the role sets): the scrape sessions' read-only and lexing settings, a statement
timeout, and `search_path` pg_catalog only, so no name of a tenant's schema is resolved in place of a
catalog's (an operator `=`, a type `float8`). Its errors become a reason (`SourceError`), never the
server's text.
"""
from __future__ import annotations

from dataclasses import dataclass

import psycopg

from exporter.scrape.rows import name_bytes, name_text
from exporter.scrape.transaction import connect_pinned
from exporter.scrape.wire import BoundedConnection
from exporter.serverlog.source import SourceError

STATEMENT_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT = 5
# Names beyond this many are not loaded: a failed login's user or database then shows as `unknown`.
MAX_NAMES = 10_000
PINNED = {"search_path": "pg_catalog,pg_temp", "statement_timeout": str(STATEMENT_TIMEOUT_MS)}


@dataclass(frozen=True)
class LogSettings:
    destination: str  # log_destination, e.g. 'stderr,csvlog'
    line_prefix: str
    directory: str | None  # log_directory (relative to the data directory, or absolute); None: hidden from the role
    collector: bool  # logging_collector


def reason_of(exc: psycopg.Error) -> str:
    """A failure as a bounded reason: permission denied, gone, timeout, connect or error."""
    state = getattr(exc, "sqlstate", None) or ""
    if state == "42501":
        return "permission_denied"
    if state == "58P01":
        return "not_found"
    if state == "57014":
        return "timeout"
    if isinstance(exc, psycopg.OperationalError) and not state:
        return "connect"
    return "error"


class ServerLink:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn  # may hold a password: never logged
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                # Bounded like every session of pgvigil: no answer of the server may pass wire.ANSWER_BYTES.
                self._conn = connect_pinned(self._dsn, lambda options: BoundedConnection.connect(
                    self._dsn, autocommit=True, prepare_threshold=None, connect_timeout=CONNECT_TIMEOUT,
                    application_name="pgvigil-log", client_encoding="UTF8", options=options), PINNED)
            except psycopg.Error as exc:
                raise SourceError(reason_of(exc)) from None
        return self._conn

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchmany(MAX_NAMES)
        except psycopg.Error as exc:
            if conn.broken:
                self.close()
            raise SourceError(reason_of(exc)) from None

    def settings(self) -> LogSettings:
        # pg_settings, not current_setting(): log_directory is hidden from roles without pg_read_all_settings,
        # which `source: file` does not need (its row is then absent instead of an error).
        found = dict(self._rows("SELECT name, setting FROM pg_catalog.pg_settings WHERE name IN "
                                "('log_destination', 'log_line_prefix', 'log_directory', 'logging_collector')"))
        return LogSettings(destination=found.get("log_destination", ""), line_prefix=found.get("log_line_prefix", ""),
                           directory=found.get("log_directory"), collector=found.get("logging_collector") == "on")

    def names(self) -> tuple[frozenset[str], frozenset[str]]:
        """The roles and databases the server has: the only names a failed login's labels may take."""
        # As bytes: a tenant's role or database named in bytes that are not UTF-8 must not stop the reading.
        roles = self._rows(f"SELECT {name_bytes('rolname')} FROM pg_catalog.pg_roles ORDER BY oid")
        databases = self._rows(f"SELECT {name_bytes('datname')} FROM pg_catalog.pg_database ORDER BY oid")
        return frozenset(name_text(r[0]) for r in roles), frozenset(name_text(d[0]) for d in databases)

    def ls_logdir(self) -> list[tuple[str, int, float]]:
        return [(r[0], int(r[1]), float(r[2])) for r in self._rows(
            "SELECT name, size, extract(epoch FROM modification)::pg_catalog.float8 FROM pg_catalog.pg_ls_logdir()")]

    def read(self, path: str, offset: int, length: int) -> bytes:
        rows = self._rows("SELECT pg_catalog.pg_read_binary_file(%s, %s::bigint, %s::bigint)", (path, offset, length))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else b""

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None
