"""Who blocks whom: a root blocker (blocking others, blocked by no one) keeping sessions waiting.

The value is the longest wait in the tree behind one root (pg_blocking_root_max_wait_seconds, the
blocking pack). A root idle in transaction is the classic 3 a.m. case, an application that opened
a transaction and went away: it will not finish by itself, hence its own alert, critical.
"""
from __future__ import annotations

from exporter.bundle.catalog.spec import BASE, AlertSpec, gauge

GROUP = "pgvigil-blocking"
IDLE_IN_TRANSACTION = 'state=~"idle in transaction.*"'  # the aborted variant blocks the same way
NOT_IDLE_IN_TRANSACTION = 'state!~"idle in transaction.*"'


def _root(state: str) -> dict[str, str]:
    return {"pid": "4242", "datname": "app", "usename": "batch", "application_name": "nightly-job",
            "state": state, "locktype": "relation", "mode": "AccessExclusiveLock", "relation": "public.orders"}


_DESCRIPTION = ("Session {pid} (user {usename}, application {application_name}, {state}) in database {datname} on "
                "{target} holds {mode} ({locktype} {relation}) and blocks others: one of them has waited {value} "
                "(alert above {level}).")

ALERTS = (
    AlertSpec(
        name="PostgresLockBlocking",
        threshold="lock_blocking",
        group=GROUP,
        value_expr=f"pg_blocking_root_max_wait_seconds{{{NOT_IDLE_IN_TRANSACTION}}}",
        summary="A PostgreSQL session blocks others for a long time",
        description=_DESCRIPTION,
        scenario=gauge("pg_blocking_root_max_wait_seconds", {**BASE, **_root("active")}),
    ),
    AlertSpec(
        name="PostgresLockBlockerIdleInTransaction",
        threshold="lock_blocking_idle_in_transaction",
        group=GROUP,
        value_expr=f"pg_blocking_root_max_wait_seconds{{{IDLE_IN_TRANSACTION}}}",
        summary="A PostgreSQL session idle in transaction blocks others",
        description=_DESCRIPTION,
        scenario=gauge("pg_blocking_root_max_wait_seconds", {**BASE, **_root("idle in transaction")}),
    ),
)
