"""What a scrape reports of each target, and what it waits for.

A configured target, and a discovery root's DSN database (it runs the cluster-wide queries), is
scraped as it always was: the scrape waits for its run until the deadline, and a query the run
has not finished by then is a timeout of that scrape.

A discovered database is visited in its turn (visits.py), which may be after the scrape's
deadline when a server has thousands of them: its scrape reports what its latest visit left.
It is waited for only while that is not enough (never visited yet, unreachable last time, or a
result past twice its ttl), and never beyond the deadline; a visit still queued or running then
is neither a timeout nor a reason to call the database down. A database never visited has no
series at all (it is counted in pgvigil_discovery_databases_not_yet_scraped), never `pg_up 0`; nor
has any target whose first connect has not ended yet.
"""
from __future__ import annotations

import time
from typing import Sequence

from exporter.config import QuerySpec
from exporter.scrape.outcome import QueryOutcome
from exporter.scrape.state import TargetState


def reported(state: TargetState) -> bool:
    """Whether a scrape reports the target (its pg_up, its queries): not one never reached yet (its first
    connect is still waiting or under way: not yet scraped, which is not down), nor a database gone since
    its run began."""
    return not state.removed and state.up is not None


def awaited(state: TargetState, eligible: Sequence[QuerySpec]) -> bool:
    """Whether the scrape waits (until its deadline) for the target's run."""
    if not state.discovered_database or state.up is not True:
        return True
    now = time.monotonic()
    return not all(query.ttl > 0 and state.statuses[query.name].success
                   and now - state.statuses[query.name].finished_at < 2 * query.ttl for query in eligible)


def settled(state: TargetState, eligible: Sequence[QuerySpec], probe_due: bool) -> bool:
    """A discovered database whose every result is within its ttl (and whose privileges need no probe):
    nothing to run, so nothing to connect for. Its reachability is that of its latest visit."""
    return (state.discovered_database and state.up is True and not probe_due
            and not any(state.due(query) for query in eligible))


def outcome(state: TargetState, query: QuerySpec, run_id: int, run_done: bool, now: float) -> QueryOutcome | None:
    """The query on the target as this scrape reports it (None: not reported, never run there)."""
    status = state.statuses[query.name]
    if state.discovered_database:
        if status.success is None:
            return None
        return QueryOutcome(state, query, status, included=bool(status.success) and state.up is True, timed_out=False)
    # Run ids grow, and a target's runs follow one another: a result from this run or a later
    # one, or one a later run still reused, is current for this scrape. (Under load a newer run
    # may already have started by the time a waiting scrape looks.)
    fresh = (status.run_id >= run_id or status.reused_through >= run_id
             or (query.ttl > 0 and now - status.finished_at < query.ttl))
    if fresh:
        return QueryOutcome(state, query, status, included=bool(status.success), timed_out=False)
    if not run_done:
        # Not the database's failure: a client can shorten a scrape's deadline at will (a header), and a
        # query that outlasts its own timeout fails as "timeout" when the server cancels it.
        status.late += 1
        return QueryOutcome(state, query, status, included=False, timed_out=True)
    return QueryOutcome(state, query, status, included=False, timed_out=False)
