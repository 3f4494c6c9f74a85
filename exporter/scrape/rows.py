"""Reading a result's rows: a value the driver cannot read costs its own row, never the query.

The driver's C loaders read every row first. When one of them refuses a value (bytes that are not
UTF-8: PostgreSQL passes on what a SQL_ASCII database stored, in pg_database, pg_stat_activity or
pg_stat_statements; a year past 9999; a timestamp of 'infinity'), the same result is read again
row by row: 'infinity' becomes datetime.max/min (the renderer exports +Inf/-Inf), and a row with a
value still unreadable is left out and counted.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.adapt import Buffer, Transformer
from psycopg.types.datetime import DateLoader, IntervalLoader, TimestampLoader, TimestamptzLoader

# What the driver raises when a loader refuses a value (UnicodeDecodeError is a ValueError).
UNREADABLE = (ValueError, OverflowError, psycopg.DataError)

_INFINITE = {b"infinity": dt.datetime.max, b"-infinity": dt.datetime.min}
_INFINITE_DATE = {b"infinity": dt.date.max, b"-infinity": dt.date.min}


# The most years a Python timedelta holds (999,999,999 days). Past it psycopg's C loader wraps around and
# returns a wrong, finite interval (178,000,000 years read as 545,490,560 days) instead of refusing it.
_MAX_YEARS = 999_999_999 // 366


def check_intervals(conn: psycopg.Connection) -> None:
    """Intervals a timedelta cannot hold are refused on this connection (and their row left out, counted)."""
    conn.adapters.register_loader("interval", _CheckedInterval)


class _CheckedInterval(IntervalLoader):
    def load(self, data: Buffer) -> Any:
        text = bytes(data)
        if b"year" in text and abs(int(text.split(b" ", 1)[0] or 0)) > _MAX_YEARS:
            raise psycopg.DataError(f"interval too large for Python: {text[:40]!r}")
        return super().load(data)


@dataclass
class Rows:
    """The rows read, and how many were left out for a value the driver could not read."""

    rows: list[tuple]
    unreadable: int = 0


def read_rows(cur: psycopg.Cursor) -> Rows:
    """Every row of the cursor's current result (read once: the cursor is not used for this result again)."""
    try:
        return Rows(cur.fetchall())
    except UNREADABLE:
        return _row_by_row(cur)


def _row_by_row(cur: psycopg.Cursor) -> Rows:
    result = cur.pgresult
    assert result is not None  # fetchall() got this far
    lenient = psycopg.Cursor(cur.connection)  # only its adapters are used: nothing is sent through it
    for name, loader in (("timestamp", _Timestamp), ("timestamptz", _Timestamptz), ("date", _Date)):
        lenient.adapters.register_loader(name, loader)
    reader = Transformer(lenient)
    reader.set_pgresult(result)
    rows, unreadable = [], 0
    for i in range(result.ntuples):
        try:
            rows.append(reader.load_row(i, tuple))
        except UNREADABLE:
            unreadable += 1
    return Rows(rows, unreadable)


class _Timestamp(TimestampLoader):
    def load(self, data: Buffer) -> Any:
        return _INFINITE.get(bytes(data)) or super().load(data)


class _Timestamptz(TimestamptzLoader):
    def load(self, data: Buffer) -> Any:
        infinite = _INFINITE.get(bytes(data))
        return infinite.replace(tzinfo=dt.timezone.utc) if infinite else super().load(data)


class _Date(DateLoader):
    def load(self, data: Buffer) -> Any:
        return _INFINITE_DATE.get(bytes(data)) or super().load(data)


def name_bytes(column: str) -> str:
    """SQL reading a name column as bytea: a tenant may give a database or role a name that is not
    UTF-8 (created from a SQL_ASCII database), which the driver cannot read as text. decode(...,
    'escape') copies every byte but the backslash, which is doubled first."""
    return rf"pg_catalog.decode(pg_catalog.replace({column}::pg_catalog.text, E'\\', E'\\\\'), 'escape')"


def name_text(value: object) -> str:
    """A name read with name_bytes(), as text: bytes that are not UTF-8 read as U+FFFD, NULL as ''."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)
