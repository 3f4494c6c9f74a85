"""PgBouncer's admin console as a target: a session that can send only a fixed list of SHOW commands.

The console (`dbname=pgbouncer`) speaks the simple query protocol only and knows no transactions,
so it gets its own session class instead of TargetSession's read-only transactions. It is
read-only by construction: `run` looks the query's text up in VIEWS and sends that view's
command, never the text it was given, so user SQL cannot reach PgBouncer (`PAUSE`, `KILL`,
`SHUTDOWN` are console commands too).

Each command is read as a view with stable column names, so the packs map columns by name and a
PgBouncer release that adds, drops or renames a column does not break them: columns the view
does not declare are ignored, declared ones the server lacks come back NULL (no sample), renamed
ones are read under their newer name, and microsecond times become seconds. SHOW LISTS and SHOW
CONFIG answer one row per item; their views turn that into one row with a column per item.
"""
from __future__ import annotations

import decimal
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import psycopg

from exporter.config import CONSOLE_COMMANDS, Defaults, TargetSpec
from exporter.redaction import dsn_secrets
from exporter.scrape.render import ROW_BYTES
from exporter.scrape.session import (
    STALL_GRACE_SECONDS,
    ConnectFailed,
    FetchResult,
    PreparedSql,
    QueryFailed,
    ServerFacts,
    clean_message,
    connect_message,
    cut_socket,
)
from exporter.scrape.wire import BoundedConnection

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class View:
    """How one console command's answer becomes rows with stable columns."""

    command: str
    labels: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    renamed: Mapping[str, str] = field(default_factory=dict)  # a release's column name -> the view's name
    microseconds: frozenset[str] = frozenset()  # columns PgBouncer reports in microseconds: shown in seconds
    pivot: bool = False  # one row per item (name, value, ...): becomes one row, a column per item
    fractions: Mapping[str, str] = field(default_factory=dict)  # a seconds column -> its microseconds part
    constants: Mapping[str, float] = field(default_factory=dict)


_TIMES = frozenset({"xact_time", "query_time", "wait_time", "total_xact_time", "total_query_time", "total_wait_time"})

VIEWS: dict[str, View] = {view.command: view for view in (
    View("SHOW VERSION", labels=("version",), constants={"info": 1}),
    View("SHOW POOLS", labels=("database", "user"),
         columns=("cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active",
                  "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
                  "maxwait"), fractions={"maxwait": "maxwait_us"}),
    View("SHOW STATS", labels=("database",),
         columns=("total_query_count", "total_requests", "total_xact_count", "total_received", "total_sent",
                  "total_query_time", "total_wait_time", "total_xact_time"), microseconds=_TIMES),
    View("SHOW STATS_TOTALS", labels=("database",),
         columns=("query_count", "requests", "xact_count", "bytes_received", "bytes_sent", "query_time",
                  "wait_time", "xact_time", "server_assignment_count", "client_parse_count", "server_parse_count",
                  "bind_count"), microseconds=_TIMES),
    # The per-database server connection limit, should a release call it max_db_connections.
    View("SHOW DATABASES", labels=("name", "host", "port", "database", "force_user", "pool_mode"),
         columns=("pool_size", "min_pool_size", "reserve_pool", "max_connections", "current_connections",
                  "paused", "disabled"), renamed={"max_db_connections": "max_connections"}),
    View("SHOW LISTS", columns=("databases", "users", "pools", "free_clients", "used_clients", "login_clients",
                                "free_servers", "used_servers", "dns_names", "dns_zones", "dns_queries"),
         pivot=True),
    View("SHOW CONFIG", columns=("max_client_conn", "max_user_connections", "max_db_connections",
                                 "default_pool_size", "reserve_pool_size"), pivot=True),
)}
assert set(VIEWS) == set(CONSOLE_COMMANDS), "config.CONSOLE_COMMANDS and the console's views must agree"


def command_of(sql: str) -> str | None:
    """The allowed console command `sql` asks for (case and spacing aside), or None."""
    words = " ".join(sql.replace(";", " ").split()).upper()
    return words if words in VIEWS else None


def console_version(text: str) -> int:
    """'PgBouncer 1.18.0' -> 11800, the number a pgbouncer query's min/max_server_version compare with."""
    match = _VERSION.search(text)
    if not match:
        return 0
    major, minor, patch = (int(part or 0) for part in match.groups())
    return major * 10000 + minor * 100 + patch


def normalize(view: View, columns: Sequence[str], rows: Sequence[tuple]) -> FetchResult:
    """A console answer as the view's rows: its labels, then its columns, then its constants."""
    if view.pivot:
        rows, columns = [_pivot(rows)], [str(row[0]) for row in rows]
    index = {view.renamed.get(name, name): i for i, name in enumerate(columns)}
    names = [*view.labels, *view.columns, *view.constants]
    shaped = []
    for row in rows:
        labels = [row[index[name]] if name in index else None for name in view.labels]
        values = [_number(row[index[name]], name in view.microseconds) if name in index else None
                  for name in view.columns]
        for name, part in view.fractions.items():
            position = view.columns.index(name)
            if values[position] is not None and part in index:
                values[position] += row[index[part]] / 1e6
        shaped.append((*labels, *values, *view.constants.values()))
    return FetchResult(names, shaped)


def with_row_bytes(result: FetchResult, labels: int, max_label_bytes: int | None) -> FetchResult:
    """The ROW_BYTES column the SQL around a PostgreSQL query computes on the server, computed here: each
    row's label bytes, or -1 when one is past max_label_bytes (the renderer drops and counts the row, and
    bounds the query's text by the sizes). A console's names are whatever its config holds."""
    if max_label_bytes is None:
        return result
    sized = []
    for row in result.rows:
        lengths = [len(str(value).encode("utf-8", "replace")) for value in row[:labels] if value is not None]
        size = -1 if any(length > max_label_bytes for length in lengths) else sum(lengths)
        sized.append((*row, size))
    return FetchResult([*result.columns, ROW_BYTES], sized)


def _pivot(rows: Sequence[tuple]) -> tuple:
    return tuple(row[1] for row in rows)


def _number(value: Any, microseconds: bool) -> Any:
    """A console value as a number: SHOW CONFIG answers text, SHOW STATS numeric."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value  # left as text: render reports it as an invalid value if a metric reads it
        if not math.isfinite(value):
            return str(value)  # no count or setting of PgBouncer is infinite: an invalid value, not +Inf
    if isinstance(value, decimal.Decimal):
        value = int(value) if value == value.to_integral_value() else float(value)
    if microseconds and isinstance(value, (int, float)):
        return value / 1e6
    return value


class ConsoleSession:
    """One connection to a PgBouncer admin console, reconnected on demand (satisfies scrape.session.Session)."""

    def __init__(self, spec: TargetSpec, defaults: Defaults) -> None:
        self.spec = spec
        self.defaults = defaults
        self._conn: psycopg.Connection | None = None
        self._facts: ServerFacts | None = None
        self._secrets = dsn_secrets(spec.dsn)

    @property
    def facts(self) -> ServerFacts | None:
        return self._facts

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def ensure_connected(self) -> ServerFacts:
        if self.connected and self._facts is not None:
            return self._facts
        self.close()
        try:
            # The console has no transactions (psycopg's implicit BEGIN would be refused) and speaks only the
            # simple query protocol: execute() without parameters uses it, as long as psycopg never
            # prepares a command it has sent a few times (prepare_threshold=None).
            conn = BoundedConnection.connect(
                self.spec.dsn, connect_timeout=max(1, int(round(self.defaults.connect_timeout))),
                application_name="pgvigil", autocommit=True, prepare_threshold=None)
        except psycopg.Error as exc:
            raise ConnectFailed(connect_message(exc, self.spec.dsn, self._secrets)) from None
        self._conn = conn
        try:
            version = self._send("SHOW VERSION", self.defaults.timeout).rows
        except QueryFailed as exc:
            self.close()
            raise ConnectFailed(f"not a PgBouncer admin console? {exc}") from None
        info = conn.info
        self._facts = ServerFacts(version=console_version(str(version[0][0]) if version else ""),
                                  identity=f"pgbouncer@{info.host}:{info.port}", extensions=frozenset(),
                                  database=info.dbname)
        return self._facts

    def refresh_extensions(self) -> None:
        """PgBouncer has no extensions."""

    def run(self, prepared: PreparedSql, timeout: float, lock_timeout: float) -> FetchResult:
        """The view of an allowed SHOW command; any other text is refused before anything is sent."""
        command = command_of(prepared.sql)
        if command is None:
            raise QueryFailed(f"refused to run on a PgBouncer console: only {', '.join(VIEWS)} are sent")
        view = VIEWS[command]
        answer = self._send(view.command, timeout)
        try:
            result = normalize(view, answer.columns, answer.rows)
        except Exception as exc:  # a console (or something posing as one) answering what no release sends
            raise QueryFailed(f"{view.command}: an answer no PgBouncer release sends ({type(exc).__name__})") from None
        if prepared.limit is not None:
            result = FetchResult(result.columns, result.rows[:prepared.limit])
        return with_row_bytes(result, len(view.labels), prepared.max_label_bytes)

    def _send(self, command: str, timeout: float) -> FetchResult:
        """Send one command from VIEWS (never anything else), bounded by `timeout` plus a grace."""
        if not self.connected:
            raise QueryFailed("not connected", connection_lost=True)
        conn = self._conn
        assert conn is not None and command in VIEWS
        # The console has no statement_timeout: a stalled PgBouncer is cut off at the socket.
        watchdog = threading.Timer(timeout + STALL_GRACE_SECONDS, cut_socket, args=(conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            with conn.cursor() as cur:
                cur.execute(command)
                columns = [d.name for d in cur.description] if cur.description else []
                return FetchResult(columns, cur.fetchall() if cur.description else [])
        except psycopg.Error as exc:
            lost = conn.closed or isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
            if lost:
                self.close()
            reason = "timeout" if lost and "timeout" in str(exc).lower() else "error"
            raise QueryFailed(clean_message(exc, self._secrets), reason=reason, connection_lost=lost) from None
        finally:
            watchdog.cancel()

    def ping(self) -> float:
        """Round-trip time of SHOW VERSION in seconds (connecting first if needed)."""
        self.ensure_connected()
        start = time.perf_counter()
        self._send("SHOW VERSION", self.defaults.timeout)
        return time.perf_counter() - start

    def cancel(self) -> None:
        """The console runs no long commands: closing is the cancel (used at shutdown)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            cut_socket(conn)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None
        self._facts = None
