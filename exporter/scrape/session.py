"""Connections to one target: read-only sessions bounded by timeouts, reconnects, server facts,
and the preparation of a query's SQL for a run (`{{previous_run}}`, `{{picked}}`, the row cap).

Before anything is sent, PostgreSQL's own grammar (exporter/sqlshape.py) decides that the SQL is
exactly one read-only query: config validation rejects anything else, and the session refuses it
again here. The server then enforces it on its own: every statement goes through the extended
query protocol (one statement per Parse), each query runs in its own read-only transaction, and
what a previous query changed in the session is undone before the next is parsed
(exporter/scrape/transaction.py says how, and what is pinned). One run of a query is one round trip.

The runner sees a session only through the `Session` protocol, so its scheduling
is tested with a fake session and no database.
"""
from __future__ import annotations

import logging
import operator
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence

import psycopg

from exporter.config import PICKED_PLACEHOLDER, Defaults, MetricType, QuerySpec, TargetSpec
from exporter.logs import loggable
from exporter.redaction import connect_error, dsn_secrets, redact
from exporter.scrape.abandon import cancel_on_server, cut_socket
from exporter.scrape.render import ROW_BYTES, Histogram, InvalidValue, RowSink
from exporter.scrape.rows import check_intervals, read_rows
from exporter.scrape.transaction import (
    OWN_SQL,
    PIN,
    RESET,
    NameScope,
    connect_pinned,
    pin_parameters,
    quote_identifier,
    search_path,
)
from exporter.scrape.wire import BoundedConnection
from exporter.scrape.writecheck import first_warning, role_can_write
from exporter.sqlshape import NotAQuery, inspect

log = logging.getLogger(__name__)

# Seconds a blocked socket read may outlast statement_timeout before we cut the socket:
# covers a network stall, where the server's own timeout can never reach us.
STALL_GRACE_SECONDS = 2.0
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
    """What a session learnt at connect. `extension_schemas` maps each installed extension to its
    schema, `role_path` is the role's search_path (the user's queries resolve names through it), and
    `role_can_write` says why the role could write if a query escaped its read-only transaction."""

    version: int
    identity: str
    extensions: frozenset[str]
    database: str
    extension_schemas: tuple[tuple[str, str], ...] = ()
    role_path: str = ""
    role_can_write: tuple[str, ...] = ()


# Rows are fetched through a cursor in batches of about this many bytes of Python objects (each
# row's size is bounded by the SQL around the query: label values by max_label_bytes, values by
# MAX_VALUE_BYTES), so no result is ever held whole by libpq or the driver.
BATCH_BYTES = 16 * 1024 * 1024
# A metric column's value larger than this (pg_column_size: a float8 is 8) drops its row.
MAX_VALUE_BYTES = 64
# A Python object per value: what a value costs in memory beyond its bytes.
VALUE_OVERHEAD_BYTES = 100
_ROWS_CURSOR = "pgvigil_rows"
_WRAPPER = "pgvigil_query"  # the alias of the user's query inside pgvigil's select list
_UNDEFINED_COLUMN = "42703"
_CONFIGURED_COLUMN = re.compile(r'pgvigil_query\."((?:[^"]|"")*)"')


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
    scope: NameScope = OWN_SQL
    max_label_bytes: int | None = None  # for sessions that bound labels on our side (the PgBouncer console)
    origin: str = ""  # where the query is written (`file:line`), for the errors only the server finds


@dataclass(frozen=True)
class FetchResult:
    """A query's columns and rows, the prelude's value when one was run, the sink the rows were
    folded into instead of being kept (then `rows` is empty), and the rows left out for a value the
    driver could not read (rows.py)."""

    columns: list[str]
    rows: list[tuple]
    prelude: Any = None
    folded: RowSink | None = None
    unreadable: int = 0


# `{{previous_run}}` becomes the server time at which the query's previous successful run
# started, read in the same transaction as the query so no row falls between two runs.
PREVIOUS_RUN = "{{previous_run}}"
_NOW_UTC = "SELECT pg_catalog.to_char(pg_catalog.now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"


def scope_of(query: QuerySpec) -> NameScope:
    """Where the query's names resolve (transaction.NameScope): a shipped pack's through pg_catalog and
    its extension's schema only, the user's own through the role's search_path after pg_catalog."""
    return NameScope(extension=query.requires_extension, role_path=query.pack is None)


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
        literal = f"'{previous_run}'::pg_catalog.timestamptz" if previous_run else "pg_catalog.now()"
        sql, prelude = sql.replace(PREVIOUS_RUN, literal), _NOW_UTC
    # One row past max_series tells that the result was cut; histogram rows are observations, not series.
    plain = all(m.type in (MetricType.GAUGE, MetricType.COUNTER) for m in query.metrics)
    limit = query.max_series + 1 if plain else None
    row_bytes = len(query.labels) * query.max_label_bytes + \
        (len(query.labels) + len(query.metrics) + 1) * (MAX_VALUE_BYTES + VALUE_OVERHEAD_BYTES)
    batch = max(1, BATCH_BYTES // row_bytes)
    sink = None if plain else RowSink(query, histograms if histograms is not None else {})
    return PreparedSql(sql, prelude, limit, columns=bounded_columns(query), batch_rows=batch,
                       byte_budget=query.max_query_bytes // max(1, len(query.metrics)) if plain else None, sink=sink,
                       scope=scope_of(query), max_label_bytes=query.max_label_bytes, origin=query.origin)


def bounded_columns(query: QuerySpec) -> str:
    """The select list around a query's result: its label and metric columns, each value within its
    bound, and ROW_BYTES (the row's label bytes, or -1 when a value is over its bound: the row is
    dropped, and that value never leaves the server)."""
    labels = [f"pgvigil_query.{quote_identifier(name)}" for name in query.labels]
    values = [f"pgvigil_query.{quote_identifier(m.column)}" for m in query.metrics]
    too_long = [f"pg_catalog.octet_length({c}::pg_catalog.text) > {int(query.max_label_bytes)}" for c in labels]
    too_large = [f"pg_catalog.pg_column_size({c}) > {MAX_VALUE_BYTES}" for c in values]
    over = " OR ".join([*too_long, *too_large]) or "false"
    kept = [f"CASE WHEN {bound} THEN NULL ELSE {c} END AS {c.split('.', 1)[1]}"
            for c, bound in zip([*labels, *values], [*too_long, *too_large])]
    size = " + ".join(f"coalesce(pg_catalog.octet_length({c}::pg_catalog.text), 0)" for c in labels) or "0"
    return ", ".join([*kept, f"CASE WHEN {over} THEN -1 ELSE {size} END AS {ROW_BYTES}"])


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


_FACTS_SQL = ("SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4, pg_catalog.current_database(),"
              " pg_catalog.concat(coalesce(pg_catalog.inet_server_addr()::pg_catalog.text,"
              " pg_catalog.current_setting('unix_socket_directories')), ':', pg_catalog.current_setting('port')),"
              " pg_catalog.pg_postmaster_start_time()::pg_catalog.text,"
              # the role's own search_path: what RESET ALL returns to, not the one pinned for this statement
              " (SELECT reset_val FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=) 'search_path')")
_EXTENSIONS_SQL = ("SELECT e.extname::pg_catalog.text, n.nspname::pg_catalog.text FROM pg_catalog.pg_extension e"
                   " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace")


class TargetSession:
    """One persistent read-only connection to a target, reconnected on demand."""

    def __init__(self, spec: TargetSpec, defaults: Defaults) -> None:
        self.spec = spec
        self.defaults = defaults
        self._conn: psycopg.Connection | None = None
        self._facts: ServerFacts | None = None
        self._secrets = dsn_secrets(spec.dsn)
        # Queries whose result was larger than one batch: read through a cursor (two round trips or more).
        self._large: set[str] = set()
        # What the DBA sees in pg_stat_activity; the sampler's session says it is the sampler (sampler.py).
        self.application_name = "pgvigil"

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
            conn = connect_pinned(self.spec.dsn, lambda options: BoundedConnection.connect(
                self.spec.dsn, autocommit=True,  # each run is a pipeline: its own implicit transaction
                prepare_threshold=None,  # unnamed statements only: fine behind transaction poolers
                connect_timeout=max(1, int(round(self.defaults.connect_timeout))),
                application_name=self.application_name, client_encoding="UTF8",
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                options=options,
            ))
        except psycopg.Error as exc:
            raise ConnectFailed(self.connect_message(exc)) from None
        check_intervals(conn)
        self._conn = conn
        try:
            self._facts = self._read_facts()
        except QueryFailed as exc:
            self.close()
            raise ConnectFailed(str(exc)) from None
        if self._facts.role_can_write and first_warning(self.spec.name):
            log.warning("target %s: the monitoring role could write (%s); a read-only role is safer "
                        "(docs/security.md, pgvigil grants; pgvigil_role_can_write says it on every scrape)",
                        loggable(self.spec.name), ", ".join(self._facts.role_can_write))
        return self._facts

    def _own(self, sql: str) -> FetchResult:
        return self.fetch(sql, self.defaults.timeout, self.defaults.lock_timeout, wrap=False)

    def _read_facts(self) -> ServerFacts:
        version, database, address, started, role_path = self._own(_FACTS_SQL).rows[0]
        # A physical replica shares its primary's system identifier; the postmaster's start
        # time tells the two servers apart while staying equal for every database of one server.
        identity = f"{self._system_identifier() or address}@{started}"
        schemas = tuple(sorted(self._own(_EXTENSIONS_SQL).rows))
        writes = role_can_write(self.spec.name, database, lambda sql: self._own(sql).rows)
        return ServerFacts(version=version, identity=identity, extensions=frozenset(name for name, _ in schemas),
                           database=database, extension_schemas=schemas, role_path=role_path, role_can_write=writes)

    def _system_identifier(self) -> str | None:
        try:
            return str(self._own("SELECT system_identifier::pg_catalog.text FROM pg_catalog.pg_control_system()")
                       .rows[0][0])
        except QueryFailed as exc:
            if exc.connection_lost:
                raise
            return None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None
        self._facts = None

    def cancel(self) -> None:
        """Ask the server to cancel the running query; safe from another thread (reload, shutdown).

        Returns within abandon.CANCEL_GRACE_SECONDS whatever the network does."""
        conn = self._conn
        if conn is not None and not conn.closed:
            cancel_on_server(self.spec.dsn, conn)

    def refresh_extensions(self) -> None:
        """Re-read pg_extension (an extension may be created while pgvigil runs)."""
        if self._facts is None:
            return
        schemas = tuple(sorted(self._own(_EXTENSIONS_SQL).rows))
        self._facts = replace(self._facts, extensions=frozenset(name for name, _ in schemas),
                              extension_schemas=schemas)

    # -- queries ---------------------------------------------------------
    def run(self, prepared: PreparedSql, timeout: float, lock_timeout: float) -> FetchResult:
        """Run a prepared query: wrapped as a subquery, capped at its row limit.

        SQL that is not exactly one read-only query is refused before anything is sent (the config
        check already rejects it: this is the second line of defence, e.g. for a query built in code)."""
        try:
            inspect(prepared.sql)
        except NotAQuery as exc:
            raise QueryFailed(f"refused to run: {exc}") from None
        try:
            return self.fetch(prepared.sql, timeout, lock_timeout, prelude=prepared.prelude, limit=prepared.limit,
                              prepared=prepared)
        except QueryFailed as exc:
            if exc.sqlstate != _UNDEFINED_COLUMN or f"{_WRAPPER}." not in str(exc) or exc.connection_lost:
                raise
            raise self._missing_columns(prepared, exc, timeout, lock_timeout) from None

    def _missing_columns(self, prepared: PreparedSql, exc: QueryFailed, timeout: float,
                         lock_timeout: float) -> QueryFailed:
        """A label or metric the config names that the SQL does not return: said in the config's terms,
        with the columns the SQL does return (not pgvigil's select list around it)."""
        returned = self.fetch(prepared.sql, timeout, lock_timeout, limit=0,
                              prepared=replace(prepared, columns="*", sink=None, batch_rows=None)).columns
        wanted = _CONFIGURED_COLUMN.findall(prepared.columns)
        missing = [name for name in dict.fromkeys(n.replace('""', '"') for n in wanted) if name not in returned]
        return QueryFailed(f"its labels and metrics name columns its SQL does not return: "
                           f"{', '.join(repr(m) for m in missing) or '?'}; it returns: {', '.join(returned) or 'none'}"
                           f"{f' (written at {prepared.origin})' if prepared.origin else ''}", sqlstate=exc.sqlstate)

    def fetch(self, sql: str, timeout: float, lock_timeout: float, wrap: bool = True,
              prelude: str | None = None, limit: int | None = None,
              prepared: PreparedSql | None = None) -> FetchResult:
        """Run one query in a read-only transaction of its own.

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
        scope = prepared.scope if prepared is not None else OWN_SQL
        pins = pin_parameters(timeout, lock_timeout, self._search_path(scope))
        watchdog = threading.Timer(timeout + STALL_GRACE_SECONDS, self._abandon, args=(conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            return self._read(conn, sql, wrapped, pins, limit if wrap else None, prelude, prepared if wrap else None)
        except psycopg.Error as exc:
            raise self._failure(conn, exc) from None
        except InvalidValue as exc:
            self._end_transaction(conn)
            raise QueryFailed(str(exc), connection_lost=self._conn is None) from None
        finally:
            watchdog.cancel()

    def _search_path(self, scope: NameScope) -> str:
        facts = self._facts
        if facts is None:  # reading the facts: pgvigil's own statements, pg_catalog only
            return search_path(OWN_SQL, "", {})
        return search_path(scope, facts.role_path, dict(facts.extension_schemas))

    def _read(self, conn: psycopg.Connection, sql: str, wrapped: str, pins: Sequence[Any], limit: int | None,
              prelude: str | None, prepared: PreparedSql | None) -> FetchResult:
        """In one round trip when the result fits one batch (the row cap says so, or the first batch did);
        else through a cursor, in batches, and through the cursor from then on for this query."""
        text = f"{wrapped} LIMIT {int(limit)}" if limit is not None else wrapped
        batch = prepared.batch_rows if prepared is not None else None
        batched = batch is not None and (limit is None or limit > batch)
        if (prepared is None or prepared.sink is None) and sql not in self._large:
            if batch is None or not batched:
                return _one_pipeline(conn, pins, prelude, text)
            first = _one_pipeline(conn, pins, prelude, f"{wrapped} LIMIT {int(batch)}")
            if len(first.rows) < batch:
                return first
            del first  # read again through the cursor: never hold the two at once
            self._large.add(sql)
        if prepared is not None and batched:
            return _fetch_batches(conn, pins, prelude, text, prepared)
        return _one_pipeline(conn, pins, prelude, text)

    def _end_transaction(self, conn: psycopg.Connection) -> None:
        """Roll back what a failed query left open (a pipeline's implicit transaction ends by itself)."""
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with conn.pipeline():
                    conn.execute("ROLLBACK")
        except psycopg.Error:
            self.close()

    def _failure(self, conn: psycopg.Connection, exc: psycopg.Error) -> QueryFailed:
        exceeded = getattr(conn, "exceeded", None)
        if exceeded is not None:  # wire.py closed it: whatever the driver said next, this is why
            self.close()
            return QueryFailed(exceeded, connection_lost=True)
        code = exc.sqlstate
        lost = conn.closed or conn.broken or isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and (
            code is None or code.startswith("57P") or code.startswith("08"))
        timeout = code in ("57014", "55P03") or (lost and code is None and "timeout" in str(exc).lower())
        if not lost:
            self._end_transaction(conn)
            lost = self._conn is None
        if lost:
            self.close()
        return QueryFailed(self.clean_message(exc), reason="timeout" if timeout else "error", connection_lost=lost,
                           sqlstate=code)

    def _abandon(self, conn: psycopg.Connection) -> None:
        """Give up on a query: cancel it on the server, then unblock our read by cutting the socket.

        The cancel goes first, on its own connection: once the socket is cut the backend can no
        longer be reached through this connection, and would run on after pgvigil gave up."""
        cancel_on_server(self.spec.dsn, conn)
        cut_socket(conn)

    def ping(self) -> float:
        """Round-trip time of SELECT 1 in seconds (connecting first if needed)."""
        self.ensure_connected()
        start = time.perf_counter()
        self._own("SELECT 1")
        return time.perf_counter() - start

    def connect_message(self, exc: BaseException) -> str:
        return connect_message(exc, self.spec.dsn, self._secrets)

    def clean_message(self, exc: BaseException) -> str:
        return clean_message(exc, self._secrets)


def _one_pipeline(conn: psycopg.Connection, pins: Sequence[Any], prelude: str | None, text: str) -> FetchResult:
    """One round trip: reset, pin, [prelude,] query, in the pipeline's implicit transaction (committed
    at its Sync, not rolled back: pg_stat_database counts every ROLLBACK, and pgvigil's own would fire
    the rollback-ratio alert)."""
    reset, pin, before, query = conn.cursor(), conn.cursor(), conn.cursor(), conn.cursor()
    with conn.pipeline():
        reset.execute(RESET)
        pin.execute(PIN, pins)
        if prelude:
            before.execute(prelude)
        query.execute(text)
    return _result(query, before if prelude else None)


def _result(cur: psycopg.Cursor, prelude: psycopg.Cursor | None = None,
            folded: RowSink | None = None) -> FetchResult:
    prelude_value = prelude.fetchone()[0] if prelude is not None else None  # type: ignore[index]
    if cur.description is None:
        return FetchResult([], [], prelude_value)
    read = read_rows(cur)
    return FetchResult([d.name for d in cur.description], read.rows, prelude_value, folded, read.unreadable)


def _fetch_batches(conn: psycopg.Connection, pins: Sequence[Any], prelude: str | None, text: str,
                   prepared: PreparedSql) -> FetchResult:
    """The rows through a cursor, `batch_rows` at a time, in a read-only transaction that outlasts one
    round trip: a batch is folded into the sink, or kept until the rows' label bytes pass the byte
    budget (the renderer drops the excess and counts it)."""
    size = int(prepared.batch_rows or 1)
    fetch = f"FETCH FORWARD {size} FROM {_ROWS_CURSOR}"
    opening, reset, pin, before, declare, cur = (conn.cursor() for _ in range(6))
    # One round trip for the transaction, the cursor and its first batch: most results fit one batch.
    with conn.pipeline():
        opening.execute("BEGIN READ ONLY")
        reset.execute(RESET)
        pin.execute(PIN, pins)
        if prelude:
            before.execute(prelude)
        declare.execute(f"DECLARE {_ROWS_CURSOR} NO SCROLL CURSOR FOR {text}")
        cur.execute(fetch)
    prelude_value = before.fetchone()[0] if prelude else None  # type: ignore[index]
    columns = [d.name for d in cur.description or ()]
    if prepared.sink is not None:
        prepared.sink.start({name: i for i, name in enumerate(columns)})
    sizes = operator.itemgetter(columns.index(ROW_BYTES)) if ROW_BYTES in columns else None
    rows: list[tuple] = []
    label_bytes = unreadable = 0
    while True:
        read = read_rows(cur)
        unreadable += read.unreadable
        batch = read.rows
        if prepared.sink is not None:
            prepared.sink.feed(batch)
        else:
            rows += batch
            if sizes is not None and prepared.byte_budget is not None and batch:
                label_bytes += sum(map(sizes, batch))
                if label_bytes > prepared.byte_budget:
                    break
        if len(batch) + read.unreadable < size:
            break
        with conn.pipeline():
            cur.execute(fetch)
    # COMMIT, not ROLLBACK: see _one_pipeline.
    with conn.pipeline():
        conn.execute("COMMIT")
    return FetchResult(columns, rows, prelude_value, prepared.sink, unreadable)


def clean_message(exc: BaseException, secrets: list[str]) -> str:
    """The first lines of a driver or server error, secrets masked, at most MAX_MESSAGE_CHARS."""
    first = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
    longest = max(map(len, secrets), default=0)
    head = MAX_MESSAGE_CHARS + 2 * longest + 64
    if len(first) <= head:
        return shorten(redact(first, secrets))  # redacted first, so no cut leaves a secret's prefix
    # A message of megabytes (an error quoting a 20 MB value) is masked on its head only. A secret the
    # head's end cuts lies within its last `longest` characters, which redaction leaves in place: dropped.
    masked = redact(first[:head], secrets)
    if longest:
        masked = masked[:-longest]
    return f"{masked[:MAX_MESSAGE_CHARS]}... ({len(first) - MAX_MESSAGE_CHARS} more characters)"


def connect_message(exc: BaseException, dsn: str, secrets: list[str]) -> str:
    """A connect error without DSN fragments (libpq's parse errors quote pieces of the DSN)."""
    return connect_error(clean_message(exc, secrets), dsn)


def shorten(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """At most `limit` characters of a message, saying how much was left out."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters)"
