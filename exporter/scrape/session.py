"""Connections to one target: read-only sessions bounded by timeouts, reconnects, server facts,
and the preparation of a query's SQL for a run (`{{previous_run}}`, the row cap).

Every query runs in its own READ ONLY transaction that is always rolled back,
so a session is never left idle in transaction and user SQL cannot write.
The SQL is wrapped as a subquery, which rejects multi-statement text such as
"SELECT 1; COMMIT; DELETE ..." at parse time.

The runner sees a session only through the `Session` protocol, so its scheduling
is tested with a fake session and no database.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg2
import psycopg2.extensions

from exporter.config import Defaults, MetricType, QuerySpec, TargetSpec
from exporter.redaction import dsn_password, redact

log = logging.getLogger(__name__)

# Seconds a blocked socket read may outlast statement_timeout before we cut the socket:
# covers a network stall, where the server's own timeout can never reach us.
STALL_GRACE_SECONDS = 2.0

# A double-quoted fragment of an error message; group 1 marks a libpq option name (kept).
_QUOTED = re.compile(r'(option )?"([^"]*)"')
_DSN_PARSE_ERROR = re.compile(r"invalid dsn|connection info string|connection option|\bURI\b", re.IGNORECASE)


class QueryFailed(Exception):
    """A query failed; `reason` is 'error' or 'timeout'; `connection_lost` asks for a reconnect;
    `sqlstate` is PostgreSQL's error code when the server answered (capability.py reads it)."""

    def __init__(self, message: str, reason: str = "error", connection_lost: bool = False,
                 sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.connection_lost = connection_lost
        self.sqlstate = sqlstate


class ConnectFailed(Exception):
    pass


@dataclass(frozen=True)
class ServerFacts:
    version: int
    identity: str
    extensions: frozenset[str]
    database: str


@dataclass(frozen=True)
class PreparedSql:
    """What one run of a query sends: its SQL, an optional prelude SELECT and a row cap."""

    sql: str
    prelude: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class FetchResult:
    """A query's columns and rows, and the prelude's value when one was run."""

    columns: list[str]
    rows: list[tuple]
    prelude: Any = None


# `{{previous_run}}` becomes the server time at which the query's previous successful run
# started, read in the same transaction as the query so no row falls between two runs.
PREVIOUS_RUN = "{{previous_run}}"
_NOW_UTC = "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
# The schemas of installed extensions not yet on the search path, appended to it (_extend_search_path).
_EXTENSION_SEARCH_PATH = (
    "SELECT set_config('search_path', concat_ws(', ', nullif(current_setting('search_path'), ''),"
    " string_agg(DISTINCT quote_ident(n.nspname), ', ')), false)"
    " FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
    " WHERE n.nspname <> ALL (current_schemas(true))")


def prepare_sql(query: QuerySpec, previous_run: str | None) -> PreparedSql:
    """The SQL of one run of `query`; `previous_run` is the prelude value of its last successful run."""
    sql, prelude = query.sql, None
    if query.uses_previous_run:
        literal = f"'{previous_run}'::timestamptz" if previous_run else "now()"
        sql, prelude = sql.replace(PREVIOUS_RUN, literal), _NOW_UTC
    # One row past max_series tells that the result was cut; histogram rows are observations, not series.
    plain = all(m.type in (MetricType.GAUGE, MetricType.COUNTER) for m in query.metrics)
    return PreparedSql(sql, prelude, query.max_series + 1 if plain else None)


class Session(Protocol):
    """What the runner needs of a connection to a target (TargetSession, or a fake in tests)."""

    @property
    def facts(self) -> ServerFacts | None: ...

    def ensure_connected(self) -> ServerFacts: ...

    def refresh_extensions(self) -> None: ...

    def run(self, prepared: PreparedSql, timeout: float, lock_timeout: float) -> FetchResult: ...

    def ping(self) -> float: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


class TargetSession:
    """One persistent read-only connection to a target, reconnected on demand."""

    def __init__(self, spec: TargetSpec, defaults: Defaults) -> None:
        self.spec = spec
        self.defaults = defaults
        self._conn: psycopg2.extensions.connection | None = None
        self._facts: ServerFacts | None = None
        self._secrets = [s for s in (dsn_password(spec.dsn), spec.dsn if "password" in spec.dsn.lower() else None) if s]

    # -- connection ------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def facts(self) -> ServerFacts | None:
        return self._facts

    def ensure_connected(self) -> ServerFacts:
        if self.connected and self._facts is not None:
            return self._facts
        self.close()
        try:
            conn = psycopg2.connect(
                self.spec.dsn,
                connect_timeout=max(1, int(round(self.defaults.connect_timeout))),
                application_name="pgvigil",
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                options="-c default_transaction_read_only=on -c idle_in_transaction_session_timeout=60000",
            )
        except psycopg2.Error as exc:
            raise ConnectFailed(self.connect_message(exc)) from None
        conn.set_session(readonly=True, autocommit=False)
        self._conn = conn
        try:
            self._facts = self._read_facts()
            self._extend_search_path(conn)
        except QueryFailed as exc:
            self.close()
            raise ConnectFailed(str(exc)) from None
        return self._facts

    def _extend_search_path(self, conn: Any) -> None:
        """Put the schemas of installed extensions on this session's search_path, after the role's own.

        Managed platforms keep extensions in a schema of their own (Supabase: pg_stat_statements in
        `extensions`), which a monitoring role's search_path often lacks: the packs name extension
        views unqualified and find them wherever they live. Committed, so it lasts the session."""
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('statement_timeout', %s, true)",
                            (f"{int(self.defaults.timeout * 1000)}ms",))
                cur.execute(_EXTENSION_SEARCH_PATH)
            conn.commit()
        except psycopg2.Error as exc:
            raise self._failure(conn, exc) from None

    def _read_facts(self) -> ServerFacts:
        rows = self.fetch(
            "SELECT current_setting('server_version_num')::int, current_database(),"
            " coalesce(inet_server_addr()::text, current_setting('unix_socket_directories')) || ':'"
            " || current_setting('port'),"
            " ARRAY(SELECT extname::text FROM pg_extension), pg_postmaster_start_time()::text",
            timeout=self.defaults.timeout, lock_timeout=self.defaults.lock_timeout, wrap=False,
        ).rows
        version, database, address, extensions, started = rows[0]
        # A physical replica shares its primary's system identifier; the postmaster's start
        # time tells the two servers apart while staying equal for every database of one server.
        identity = f"{self._system_identifier() or address}@{started}"
        return ServerFacts(version=version, identity=identity, extensions=frozenset(extensions), database=database)

    def _system_identifier(self) -> str | None:
        try:
            rows = self.fetch("SELECT system_identifier::text FROM pg_control_system()",
                              timeout=self.defaults.timeout, lock_timeout=self.defaults.lock_timeout, wrap=False).rows
            return str(rows[0][0])
        except QueryFailed as exc:
            if exc.connection_lost:
                raise
            return None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = None
        self._facts = None

    def cancel(self) -> None:
        """Ask the server to cancel the running query; safe from another thread (used at shutdown)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.cancel()
            except psycopg2.Error:
                pass

    def refresh_extensions(self) -> None:
        """Re-read pg_extension (an extension may be created while pgvigil runs)."""
        if self._facts is None:
            return
        rows = self.fetch("SELECT ARRAY(SELECT extname::text FROM pg_extension)",
                          timeout=self.defaults.timeout, lock_timeout=self.defaults.lock_timeout, wrap=False).rows
        self._facts = ServerFacts(self._facts.version, self._facts.identity, frozenset(rows[0][0]), self._facts.database)

    # -- queries ---------------------------------------------------------
    def run(self, prepared: PreparedSql, timeout: float, lock_timeout: float) -> FetchResult:
        """Run a prepared query: wrapped as a subquery, capped at its row limit."""
        return self.fetch(prepared.sql, timeout, lock_timeout, prelude=prepared.prelude, limit=prepared.limit)

    def fetch(self, sql: str, timeout: float, lock_timeout: float, wrap: bool = True,
              prelude: str | None = None, limit: int | None = None) -> FetchResult:
        """Run one query in a read-only transaction.

        `limit` caps the rows the server sends (a wrapped query only), so a runaway
        result never reaches pgvigil's memory. `prelude` is an extra read-only SELECT
        run first in the same transaction; its single value comes back as `prelude`.
        """
        if not self.connected:
            raise QueryFailed("not connected", connection_lost=True)
        conn = self._conn
        assert conn is not None
        text = f"SELECT * FROM (\n{sql.strip().rstrip(';')}\n) AS pgvigil_query" if wrap else sql
        if wrap and limit is not None:
            text += f" LIMIT {int(limit)}"
        watchdog = threading.Timer(timeout + STALL_GRACE_SECONDS, self._cut_socket, args=(conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            with conn.cursor() as cur:
                # A SELECT (not SET) first, so the snapshot is taken and the transaction
                # can no longer be switched to READ WRITE by the user's SQL.
                cur.execute("SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                            (f"{int(timeout * 1000)}ms", f"{int(lock_timeout * 1000)}ms"))
                prelude_value = None
                if prelude:
                    cur.execute(prelude)
                    prelude_value = cur.fetchone()[0]
                cur.execute(text)
                columns = [d.name for d in cur.description] if cur.description else []
                rows = cur.fetchall() if cur.description else []
            conn.rollback()
            return FetchResult(columns, rows, prelude_value)
        except psycopg2.Error as exc:
            raise self._failure(conn, exc) from None
        except (ValueError, OverflowError) as exc:
            # The driver could not convert a value (year 294276, an interval of 10^8 years):
            # the query fails, the session stays usable.
            try:
                conn.rollback()
            except psycopg2.Error:
                self.close()
            raise QueryFailed(f"cannot read the result: {exc}; cast the column in SQL "
                              "(e.g. extract(epoch FROM ...))", connection_lost=self._conn is None) from None
        finally:
            watchdog.cancel()

    def _failure(self, conn: Any, exc: psycopg2.Error) -> QueryFailed:
        lost = conn.closed != 0 or isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and (
            exc.pgcode is None or exc.pgcode.startswith("57P") or exc.pgcode.startswith("08"))
        timeout = exc.pgcode in ("57014", "55P03") or (lost and exc.pgcode is None and "timeout" in str(exc).lower())
        if not lost:
            try:
                conn.rollback()
            except psycopg2.Error:
                lost = True
        if lost:
            self.close()
        return QueryFailed(self.clean_message(exc), reason="timeout" if timeout else "error", connection_lost=lost,
                           sqlstate=exc.pgcode)

    @staticmethod
    def _cut_socket(conn: Any) -> None:
        """Unblock a read stuck on a stalled network by shutting the socket down."""
        try:
            sock = socket.socket(fileno=conn.fileno())
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.detach()
        except (OSError, psycopg2.Error, ValueError):
            pass

    def ping(self) -> float:
        """Round-trip time of SELECT 1 in seconds (connecting first if needed)."""
        self.ensure_connected()
        start = time.perf_counter()
        self.fetch("SELECT 1", timeout=self.defaults.timeout, lock_timeout=self.defaults.lock_timeout, wrap=False)
        return time.perf_counter() - start

    def connect_message(self, exc: BaseException) -> str:
        """A connect error without DSN fragments: libpq's parse errors quote pieces of the DSN,
        e.g. `missing "=" after "word"` for an unquoted password containing a space."""
        message = self.clean_message(exc)
        if not _DSN_PARSE_ERROR.search(message):
            return message  # a server's answer ('database "x" does not exist'): keep the names, they help
        return _QUOTED.sub(lambda m: m.group(0) if m.group(1) or len(m.group(2)) < 2 or m.group(2) not in self.spec.dsn
                           else '"***"', message)

    def clean_message(self, exc: BaseException) -> str:
        message = getattr(exc, "pgerror", None) or str(exc)
        first = " ".join(line.strip() for line in message.strip().splitlines()[:2])
        return redact(first, self._secrets)
