"""A query's `pick`: which rows it reads, chosen less often than the rows are read.

Ranking 5,000 tables to find the 200 worth exporting costs more than reading those 200 tables'
counters (docs/performance.md). A query with `pick: {sql, every}` runs its pick first, keeps the
integers of the pick's first column (oids, pids) per target, and on each run until `every` has
passed reads only those, through `{{picked}}` in its SQL. A table created since is seen at the
next pick; a dropped one just returns no row. Queries with the same pick SQL and max_series share
one pick per target (the tables pack's counters and sizes: one ranking of the tables). Only
integers reach the query's SQL, so whatever the pick returns cannot change what that SQL is.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from exporter.config import QuerySpec
from exporter.scrape.session import FetchResult, PreparedSql, QueryFailed, Session, scope_of


@dataclass(frozen=True)
class Picked:
    ids: tuple[int, ...]
    at: float  # time.monotonic() of the pick


def picked_ids(picks: dict[tuple[str, int], Picked], session: Session, query: QuerySpec) -> tuple[int, ...]:
    """The ids the query reads on this run: the last pick's, or a new pick's once `every` has passed.
    The caller holds the session. A failed pick fails the query's run (QueryFailed, said to be the pick's)."""
    if query.pick is None:
        return ()
    key = (query.pick.sql, query.max_series)  # the same pick, bounded alike: one result for both
    last = picks.get(key)
    if last is not None and time.monotonic() - last.at < query.pick.every:
        return last.ids
    try:
        result = session.run(PreparedSql(query.pick.sql, limit=query.max_series + 1, scope=scope_of(query)),
                             timeout=query.timeout, lock_timeout=query.lock_timeout)
    except QueryFailed as exc:
        raise QueryFailed(f"pick: {exc}", exc.reason, exc.connection_lost, exc.sqlstate) from None
    ids = ids_of(result, query.max_series)
    picks[key] = Picked(ids, time.monotonic())
    return ids


def ids_of(result: FetchResult, most: int) -> tuple[int, ...]:
    """The distinct integers of the result's first column, in order (NULLs left out)."""
    if not result.columns:
        raise QueryFailed("pick: returned no column; expected integers (oids, pids) in its first column")
    if len(result.rows) > most:
        raise QueryFailed(f"pick: returned more than max_series ({most}) rows; add a LIMIT to the pick's sql "
                          "or raise the query's max_series")
    values = [row[0] for row in result.rows if row[0] is not None]
    wrong = next((v for v in values if isinstance(v, bool) or not isinstance(v, int)), None)
    if wrong is not None:
        # The type, not the value: like a metric column's, a value is not echoed into logs and errors.
        raise QueryFailed(f"pick: expected integers (oids, pids) in its first column "
                          f"'{result.columns[0]}', got {type(wrong).__name__}")
    return tuple(dict.fromkeys(values))
