"""Why a target's monitoring role could write, were a query to escape its read-only transaction.

The check scans pg_class with a privilege test per relation: on a database of 100,000 tables it costs
the server far more than a scrape. A discovered database reconnects on every visit, so the answer is
kept per (target, database) and read again only every REFRESH_SECONDS (a GRANT or REVOKE shows
within that time, as the capability probe's does)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

ROLE_CAN_WRITE_SQL = """
SELECT reason FROM (
  SELECT 'superuser' AS reason FROM pg_catalog.pg_roles WHERE rolname = current_user AND rolsuper
  UNION ALL
  SELECT 'writes tables' WHERE EXISTS (
    SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND pg_catalog.has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE'))
) AS why"""
REFRESH_SECONDS = 300.0

_lock = threading.Lock()
_checked: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = {}
_warned: set[str] = set()


def role_can_write(target: str, database: str, read: Callable[[str], Sequence[Sequence[object]]],
                   clock: Callable[[], float] = time.monotonic) -> tuple[str, ...]:
    """The reasons the role could write (empty: it cannot), from `read(ROLE_CAN_WRITE_SQL)` at most
    once per REFRESH_SECONDS for this target and database."""
    now = clock()
    key = (target, database)
    with _lock:
        cached = _checked.get(key)
    if cached is not None and now - cached[0] < REFRESH_SECONDS:
        return cached[1]
    reasons = tuple(str(row[0]) for row in read(ROLE_CAN_WRITE_SQL))
    with _lock:
        # Databases come and go (a tenant may create and drop them by the thousand): stale answers go.
        for old in [k for k, (at, _) in _checked.items() if now - at >= REFRESH_SECONDS]:
            del _checked[old]
        _checked[key] = (now, reasons)
    return reasons


def first_warning(target: str) -> bool:
    """Whether the could-write warning for this target is the process's first (a discovered database
    reconnects on every visit: a thousand of them would log a line each, every visit)."""
    with _lock:
        first = target not in _warned
        _warned.add(target)
        return first
