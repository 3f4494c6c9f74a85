"""Connections to one target: read-only sessions bounded by timeouts, reconnects, server facts,
and the preparation of a query's SQL for a run (`{{previous_run}}`, `{{picked}}`, the row cap).

Every query runs in its own transaction made READ ONLY by pgvigil's first statement
(whatever the session's defaults, which user SQL could change) and ended at once, so a
session is never left idle in transaction and user SQL cannot write. Most queries take one
round trip: the statements of one message are one implicit transaction.
Before anything is sent, PostgreSQL's own grammar (exporter/sqlshape.py) decides
that the SQL is exactly one read-only query: config validation rejects anything
else, and the session refuses it again here, so a second statement ("... ; COMMIT;
DELETE ...", "SET LOCAL statement_timeout = 0") never reaches a server.

The runner sees a session only through the `Session` protocol, so its scheduling
is tested with a fake session and no database.
"""
from __future__ import annotations

import logging
import operator
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence

import psycopg2
import psycopg2.extensions

from exporter.config import PICKED_PLACEHOLDER, Defaults, MetricType, QuerySpec, TargetSpec
from exporter.redaction import connect_error, dsn_secrets, redact
from exporter.scrape.render import ROW_BYTES, Histogram, InvalidValue, RowSink
from exporter.sqlshape import NotAQuery, inspect

log = logging.getLogger(__name__)

# Seconds a blocked socket read may outlast statement_timeout before we cut the socket:
# covers a network stall, where the server's own timeout can never reach us.
STALL_GRACE_SECONDS = 2.0
# Seconds the watchdog lets its cancel request try to reach the server before it cuts the socket.
CANCEL_GRACE_SECONDS = 1.0
# Characters of a server or driver message kept (logs, landing page, /health): PostgreSQL can
# send an error of any size (a RAISE with a 20 MB message).
MAX_MESSAGE_CHARS = 1000


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


# Rows are fetched through a cursor in batches of about this many bytes of Python objects (each
# row's size is bounded by the SQL around the query: label values by max_label_bytes, values by
# MAX_VALUE_BYTES), so no result is ever held whole by libpq or the driver.
BATCH_BYTES = 16 * 1024 * 1024
# A metric column's value larger than this (pg_column_size: a float8 is 8) drops its row.
MAX_VALUE_BYTES = 64
# A Python object per value: what a value costs in memory beyond its bytes.
VALUE_OVERHEAD_BYTES = 100
_ROWS_CURSOR = "pgvigil_rows"


@dataclass(frozen=True)
class PreparedSql:
    """What one run of a query sends: its SQL, an optional prelude SELECT and a row cap.

    `columns` is the select list around the query's result, `batch_rows` the rows fetched at once
    through a cursor (None: all at once), `byte_budget` the label bytes after which no more rows are
    fetched, and `sink` folds each batch as it comes (histograms: the rows are not kept)."""

    sql: str
    prelude: str | None = None
    limit: int | None = None
    columns: str = "*"
    batch_rows: int | None = None
    byte_budget: int | None = None
    sink: RowSink | None = None


@dataclass(frozen=True)
class FetchResult:
    """A query's columns and rows, the prelude's value when one was run, and the sink the rows were
    folded into instead of being kept (then `rows` is empty)."""

    columns: list[str]
    rows: list[tuple]
    prelude: Any = None
    folded: RowSink | None = None


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


def prepare_sql(query: QuerySpec, previous_run: str | None,
                histograms: dict[str, dict[tuple, Histogram]] | None = None,
                picked: Sequence[int] = ()) -> PreparedSql:
    """The SQL of one run of `query`; `previous_run` is the prelude value of its last successful run,
    `histograms` the query's cumulative histograms on the target (read while its rows are folded),
    `picked` the ids its pick chose (integers: nothing else can reach the SQL through them)."""
    sql, prelude = query.sql, None
    if query.pick is not None:
        sql = sql.replace(PICKED_PLACEHOLDER, "'{" + ",".join(str(int(i)) for i in picked) + "}'")
    if query.uses_previous_run:
        literal = f"'{previous_run}'::timestamptz" if previous_run else "now()"
        sql, prelude = sql.replace(PREVIOUS_RUN, literal), _NOW_UTC
    # One row past max_series tells that the result was cut; histogram rows are observations, not series.
    plain = all(m.type in (MetricType.GAUGE, MetricType.COUNTER) for m in query.metrics)
    limit = query.max_series + 1 if plain else None
    row_bytes = len(query.labels) * query.max_label_bytes + \
        (len(query.labels) + len(query.metrics) + 1) * (MAX_VALUE_BYTES + VALUE_OVERHEAD_BYTES)
    batch = max(1, BATCH_BYTES // row_bytes)
    sink = None if plain else RowSink(query, histograms if histograms is not None else {})
    return PreparedSql(sql, prelude, limit, columns=bounded_columns(query), batch_rows=batch,
                       byte_budget=query.max_query_bytes // max(1, len(query.metrics)) if plain else None, sink=sink)


def bounded_columns(query: QuerySpec) -> str:
    """The select list around a query's result: its label and metric columns, each value within its
    bound, and ROW_BYTES (the row's label bytes, or -1 when a value is over its bound: the row is
    dropped, and that value never leaves the server)."""
    labels = [f"pgvigil_query.{_identifier(name)}" for name in query.labels]
    values = [f"pgvigil_query.{_identifier(m.column)}" for m in query.metrics]
    too_long = [f"octet_length({c}::text) > {int(query.max_label_bytes)}" for c in labels]
    too_large = [f"pg_column_size({c}) > {MAX_VALUE_BYTES}" for c in values]
    over = " OR ".join([*too_long, *too_large]) or "false"
    kept = [f"CASE WHEN {bound} THEN NULL ELSE {c} END AS {c.split('.', 1)[1]}"
            for c, bound in zip([*labels, *values], [*too_long, *too_large])]
    size = " + ".join(f"coalesce(octet_length({c}::text), 0)" for c in labels) or "0"
    return ", ".join([*kept, f"CASE WHEN {over} THEN -1 ELSE {size} END AS {ROW_BYTES}"])


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
        self._secrets = dsn_secrets(spec.dsn)
        # Queries whose result was larger than one batch: read through a cursor (two round trips or more).
        self._large: set[str] = set()

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
                # standard_conforming_strings pinned to on, the setting the SQL check parses with:
                # with it off, 'a\\', '; DELETE ...' would be one statement to the check, two to the server.
                options="-c default_transaction_read_only=on -c idle_in_transaction_session_timeout=60000"
                        " -c standard_conforming_strings=on",
            )
        except psycopg2.Error as exc:
            raise ConnectFailed(self.connect_message(exc)) from None
        conn.autocommit = True  # each fetch opens its own read-only transaction
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
        views unqualified and find them wherever they live. Not local, so it lasts the session."""
        try:
            with conn.cursor() as cur:
                bounds = _bounds(self.defaults.timeout, self.defaults.lock_timeout)
                cur.execute(f"SET TRANSACTION READ ONLY; {bounds}; {_EXTENSION_SEARCH_PATH}")
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
        """Ask the server to cancel the running query; safe from another thread (reload, shutdown).

        Returns within CANCEL_GRACE_SECONDS whatever the network does (see `_cancel_on_server`)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            self._cancel_on_server(conn)

    def refresh_extensions(self) -> None:
        """Re-read pg_extension (an extension may be created while pgvigil runs)."""
        if self._facts is None:
            return
        rows = self.fetch("SELECT ARRAY(SELECT extname::text FROM pg_extension)",
                          timeout=self.defaults.timeout, lock_timeout=self.defaults.lock_timeout, wrap=False).rows
        self._facts = replace(self._facts, extensions=frozenset(rows[0][0]))

    # -- queries ---------------------------------------------------------
    def run(self, prepared: PreparedSql, timeout: float, lock_timeout: float) -> FetchResult:
        """Run a prepared query: wrapped as a subquery, capped at its row limit.

        SQL that is not exactly one read-only query is refused before anything is sent (the config
        check already rejects it: this is the second line of defence, e.g. for a query built in code)."""
        try:
            inspect(prepared.sql)
        except NotAQuery as exc:
            raise QueryFailed(f"refused to run: {exc}") from None
        return self.fetch(prepared.sql, timeout, lock_timeout, prelude=prepared.prelude, limit=prepared.limit,
                          prepared=prepared)

    def fetch(self, sql: str, timeout: float, lock_timeout: float, wrap: bool = True,
              prelude: str | None = None, limit: int | None = None,
              prepared: PreparedSql | None = None) -> FetchResult:
        """Run one query in a read-only transaction.

        `limit` caps the rows the server sends (a wrapped query only), so a runaway
        result never reaches pgvigil's memory. `prelude` is an extra read-only SELECT
        run first in the same transaction; its single value comes back as `prelude`.
        """
        if not self.connected:
            raise QueryFailed("not connected", connection_lost=True)
        conn = self._conn
        assert conn is not None
        columns = prepared.columns if prepared is not None else "*"
        wrapped = f"SELECT {columns} FROM (\n{sql.strip().rstrip(';')}\n) AS pgvigil_query" if wrap else sql
        watchdog = threading.Timer(timeout + STALL_GRACE_SECONDS, self._abandon, args=(conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            with conn.cursor() as cur:
                return self._read(cur, sql, wrapped, _bounds(timeout, lock_timeout), limit if wrap else None,
                                  prelude, prepared if wrap else None)
        except psycopg2.Error as exc:
            raise self._failure(conn, exc) from None
        except InvalidValue as exc:
            self._end_transaction(conn)
            raise QueryFailed(str(exc), connection_lost=self._conn is None) from None
        except (ValueError, OverflowError) as exc:
            # The driver could not convert a value (year 294276, an interval of 10^8 years):
            # the query fails, the session stays usable.
            self._end_transaction(conn)
            raise QueryFailed(f"cannot read the result: {exc}; cast the column in SQL "
                              "(e.g. extract(epoch FROM ...))", connection_lost=self._conn is None) from None
        finally:
            watchdog.cancel()

    def _read(self, cur: Any, sql: str, wrapped: str, bounds: str, limit: int | None, prelude: str | None,
              prepared: PreparedSql | None) -> FetchResult:
        """In one message when the result fits one batch (the row cap says so, or the first batch did);
        else through a cursor, in batches, and through the cursor from then on for this query."""
        text = f"{wrapped} LIMIT {int(limit)}" if limit is not None else wrapped
        batch = prepared.batch_rows if prepared is not None else None
        batched = batch is not None and (limit is None or limit > batch)
        if prelude is None and (prepared is None or prepared.sink is None) and sql not in self._large:
            if batch is None or not batched:
                return self._one_message(cur, bounds, text)
            first = self._one_message(cur, bounds, f"{wrapped} LIMIT {int(batch)}")
            if len(first.rows) < batch:
                return first
            del first  # read again through the cursor: never hold the two at once
            self._large.add(sql)
        return self._fetch_in_transaction(cur, bounds, text, prelude, prepared if batched else None)

    @staticmethod
    def _one_message(cur: Any, bounds: str, text: str) -> FetchResult:
        """One round trip: the statements of one message are one implicit transaction, made
        read-only first and committed when the last statement ends."""
        cur.execute(f"SET TRANSACTION READ ONLY; {bounds}; {text}")
        return _all_rows(cur)

    @staticmethod
    def _fetch_in_transaction(cur: Any, bounds: str, text: str, prelude: str | None,
                              batched: PreparedSql | None) -> FetchResult:
        """A query whose prelude or batches need a transaction that outlasts one message."""
        opening = f"BEGIN READ ONLY; {bounds}; "
        prelude_value = None
        if prelude:
            cur.execute(f"{opening}{prelude}")
            prelude_value = cur.fetchone()[0]
            opening = ""
        if batched is not None:
            result = TargetSession._fetch_batches(cur, opening, text, batched)
        else:
            cur.execute(f"{opening}{text}")
            result = _all_rows(cur)
        # COMMIT, not ROLLBACK: the transaction is read-only, so the two are the same for the data,
        # but pg_stat_database counts every ROLLBACK, and pgvigil's own would fire the rollback-ratio alert.
        cur.execute("COMMIT")
        return FetchResult(result.columns, result.rows, prelude_value, result.folded)

    @staticmethod
    def _fetch_batches(cur: Any, opening: str, text: str, prepared: PreparedSql) -> FetchResult:
        """The rows through a cursor, `batch_rows` at a time: a batch is folded into the sink, or kept
        until the rows' label bytes pass the byte budget (the renderer drops the excess and counts it)."""
        size = int(prepared.batch_rows or 1)
        fetch = f"FETCH FORWARD {size} FROM {_ROWS_CURSOR}"
        rows: list[tuple] = []
        label_bytes = 0
        # One round trip for the transaction, the cursor and its first batch: most results fit one
        # batch. All statements are ours; the user's SQL inside was checked to be one query.
        cur.execute(f"{opening}DECLARE {_ROWS_CURSOR} NO SCROLL CURSOR FOR {text}; {fetch}")
        columns = [d.name for d in cur.description]
        if prepared.sink is not None:
            prepared.sink.start({name: i for i, name in enumerate(columns)})
        sizes = operator.itemgetter(columns.index(ROW_BYTES)) if ROW_BYTES in columns else None
        while True:
            batch = cur.fetchall()
            if prepared.sink is not None:
                prepared.sink.feed(batch)
            else:
                rows += batch
                if sizes is not None and prepared.byte_budget is not None and batch:
                    label_bytes += sum(map(sizes, batch))
                    if label_bytes > prepared.byte_budget:
                        break
            if len(batch) < size:
                break
            cur.execute(fetch)
        return FetchResult(columns, rows, folded=prepared.sink)

    def _end_transaction(self, conn: Any) -> None:
        """Roll back what a failed query left open (an implicit transaction ends by itself)."""
        try:
            if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                with conn.cursor() as cur:
                    cur.execute("ROLLBACK")
        except psycopg2.Error:
            self.close()

    def _failure(self, conn: Any, exc: psycopg2.Error) -> QueryFailed:
        lost = conn.closed != 0 or isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and (
            exc.pgcode is None or exc.pgcode.startswith("57P") or exc.pgcode.startswith("08"))
        timeout = exc.pgcode in ("57014", "55P03") or (lost and exc.pgcode is None and "timeout" in str(exc).lower())
        if not lost:
            self._end_transaction(conn)
            lost = self._conn is None
        if lost:
            self.close()
        return QueryFailed(self.clean_message(exc), reason="timeout" if timeout else "error", connection_lost=lost,
                           sqlstate=exc.pgcode)

    def _abandon(self, conn: Any) -> None:
        """Give up on a query: cancel it on the server, then unblock our read by cutting the socket.

        The cancel goes first, on its own connection: once the socket is cut the backend can no
        longer be reached through this connection, and would run on after pgvigil gave up."""
        self._cancel_on_server(conn)
        cut_socket(conn)

    def _cancel_on_server(self, conn: Any) -> None:
        """pg_cancel_backend of this session's backend, from a connection of its own, in a thread
        given CANCEL_GRACE_SECONDS.

        Not libpq's cancel request (`conn.cancel()`): psycopg2 holds the GIL while PQcancel connects,
        so over a stalled network the whole exporter would freeze with it. psycopg2 releases the GIL
        while it connects, so this thread can hang with the network without stopping anything else."""
        try:
            pid = conn.get_backend_pid()
        except psycopg2.Error:
            return
        canceller = threading.Thread(target=_cancel_backend, args=(self.spec.dsn, pid), name="pgvigil-cancel",
                                     daemon=True)
        canceller.start()
        canceller.join(CANCEL_GRACE_SECONDS)

    def ping(self) -> float:
        """Round-trip time of SELECT 1 in seconds (connecting first if needed)."""
        self.ensure_connected()
        start = time.perf_counter()
        self.fetch("SELECT 1", timeout=self.defaults.timeout, lock_timeout=self.defaults.lock_timeout, wrap=False)
        return time.perf_counter() - start

    def connect_message(self, exc: BaseException) -> str:
        return connect_message(exc, self.spec.dsn, self._secrets)

    def clean_message(self, exc: BaseException) -> str:
        return clean_message(exc, self._secrets)


def _bounds(timeout: float, lock_timeout: float) -> str:
    """The SELECT that bounds a transaction's statements. A SELECT, not SET, so the snapshot is
    taken before the user's SQL runs and the transaction can no longer be switched to READ WRITE."""
    return (f"SELECT set_config('statement_timeout', '{int(timeout * 1000)}ms', true),"
            f" set_config('lock_timeout', '{int(lock_timeout * 1000)}ms', true)")


def _all_rows(cur: Any) -> FetchResult:
    if cur.description is None:
        return FetchResult([], [])
    return FetchResult([d.name for d in cur.description], cur.fetchall())


def clean_message(exc: BaseException, secrets: list[str]) -> str:
    """The first lines of a driver or server error, secrets masked, at most MAX_MESSAGE_CHARS."""
    message = getattr(exc, "pgerror", None) or str(exc)
    first = " ".join(line.strip() for line in message.strip().splitlines()[:2])
    return shorten(redact(first, secrets))  # redacted first, so no cut leaves a secret's prefix


def connect_message(exc: BaseException, dsn: str, secrets: list[str]) -> str:
    """A connect error without DSN fragments (libpq's parse errors quote pieces of the DSN)."""
    return connect_error(clean_message(exc, secrets), dsn)


def cut_socket(conn: Any) -> None:
    """Unblock a read stuck on a stalled network by shutting the connection's socket down."""
    try:
        sock = socket.socket(fileno=conn.fileno())
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()
    except (OSError, psycopg2.Error, ValueError):
        pass


def shorten(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """At most `limit` characters of a message, saying how much was left out."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters)"


# Only a pgvigil backend of this role: behind a pooler the pid a session knows may be the pooler's.
_CANCEL_BACKEND = ("SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                   " WHERE pid = %s AND application_name = 'pgvigil' AND usename = current_user")


def _cancel_backend(dsn: str, pid: int) -> None:
    try:
        conn = psycopg2.connect(dsn, connect_timeout=2, application_name="pgvigil cancel")
    except psycopg2.Error:
        return
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(_CANCEL_BACKEND, (pid,))
    except psycopg2.Error:
        pass
    finally:
        conn.close()
