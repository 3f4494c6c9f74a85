"""A tenant owning a database cannot end or stall pgvigil's sessions there with its database's defaults.

`ALTER DATABASE ... SET` is the owner's to run, and a session takes those defaults at connect (and back at
every RESET ALL) unless a startup option outranks them. Each test has the tenant (a non-superuser owning
its database) set them, then opens the session as the exporter, the log reader or a backup would: on the
machine's PostgreSQL 15 and, for transaction_timeout (new in 17), on 17.
"""
from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from exporter.backup.pgclient import Conninfo
from exporter.dev.servers import server_bindir
from exporter.scrape.abandon import cancel_on_server
from exporter.scrape.session import PreparedSql, TargetSession
from exporter.serverlog.link import ServerLink
from tests.conftest import config_for, wait_until

ISOLATION = PreparedSql("SELECT pg_catalog.current_setting('transaction_isolation') AS isolation,"
                        " pg_catalog.pg_backend_pid() AS pid")


def tenant_database(pg, *settings: str) -> str:
    """A database owned by a tenant role, with the defaults the tenant gave it; the superuser's DSN to it."""
    name = "tenant_" + uuid.uuid4().hex[:8]
    pg.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenant') THEN "
               "CREATE ROLE tenant LOGIN; END IF; END $$")
    pg.execute(f'CREATE DATABASE "{name}" OWNER tenant')
    tenant = psycopg.connect(pg.dsn(name, user="tenant"), autocommit=True)
    try:
        for setting in settings:
            tenant.execute(f'ALTER DATABASE "{name}" SET {setting}')
    finally:
        tenant.close()
    return pg.dsn(name)


def session_for(dsn: str) -> TargetSession:
    config = config_for(dsn)
    return TargetSession(config.targets[0], config.defaults)


def test_a_tenants_serializable_deferrable_default_does_not_stall_the_session(cluster):
    """Before: a read-only transaction that is serializable and deferrable waits for a safe snapshot, so a
    tenant holding a serializable transaction open (in any database) kept pgvigil from connecting at all:
    reading the server facts ran into the watchdog, every scrape of that database failed."""
    dsn = tenant_database(cluster, "default_transaction_isolation = 'serializable'",
                          "default_transaction_deferrable = on")
    holder = psycopg.connect(cluster.dsn("postgres"))  # a serializable read-write transaction, left open
    session = session_for(dsn)
    try:
        holder.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        holder.execute("SELECT 1")
        started = time.monotonic()
        session.ensure_connected()
        rows = session.run(ISOLATION, timeout=3, lock_timeout=1).rows
        assert rows[0][0] == "read committed"
        assert time.monotonic() - started < 2
    finally:
        session.close()
        holder.close()


def test_a_tenants_idle_session_timeout_does_not_end_the_session(cluster):
    dsn = tenant_database(cluster, "idle_session_timeout = '200ms'")
    session = session_for(dsn)
    try:
        session.ensure_connected()
        first = session.run(ISOLATION, timeout=3, lock_timeout=1).rows[0][1]
        time.sleep(1)  # scrapes are seconds apart
        assert session.run(ISOLATION, timeout=3, lock_timeout=1).rows[0][1] == first
    finally:
        session.close()


@pytest.fixture(scope="module")
def pg17(clusters):
    return clusters(server_bindir(17))


def test_a_tenants_transaction_timeout_ends_none_of_pgvigils_sessions(pg17):
    """Before: `transaction_timeout = '1ms'` (PostgreSQL 17) ended the scrape session while it read the server
    facts, every time, the log reader's at its first query, and the backup's before it listed a table."""
    dsn = tenant_database(pg17, "transaction_timeout = '1ms'")
    session = session_for(dsn)
    try:
        session.ensure_connected()
        assert session.run(PreparedSql("SELECT pg_catalog.pg_sleep(0.05) AS slept"), timeout=3,
                           lock_timeout=1).rows == [("",)]
    finally:
        session.close()
    link = ServerLink(dsn)
    try:
        assert link.settings().destination
    finally:
        link.close()
    conn = Conninfo.parse(dsn).connect(application_name="pgvigil backup")
    try:
        conn.execute("SELECT pg_catalog.pg_sleep(0.05)")
        conn.commit()
    finally:
        conn.close()


def test_a_tenants_transaction_timeout_does_not_stop_the_cancel_of_a_query_pgvigil_gave_up_on(pg17):
    """The watchdog's cancel (scrape/abandon.py) runs in its own session: before, `transaction_timeout = '1ms'`
    ended it before pg_cancel_backend ran, and the query pgvigil gave up on ran on."""
    dsn = tenant_database(pg17, "transaction_timeout = '1ms'")
    stuck = psycopg.connect(dsn, autocommit=True, application_name="pgvigil", options="-c transaction_timeout=0")
    try:
        outcome: list[BaseException | None] = []

        def sleep() -> None:
            try:
                stuck.execute("SELECT pg_catalog.pg_sleep(30)")
                outcome.append(None)
            except psycopg.Error as exc:
                outcome.append(exc)

        sleeper = threading.Thread(target=sleep, daemon=True)
        sleeper.start()
        wait_until(lambda: pg17.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)'"
                                        " AND state = 'active' AND pid <> pg_backend_pid()")[0][0], 5, "the sleep")
        cancel_on_server(dsn, stuck)
        sleeper.join(3)
        assert outcome and isinstance(outcome[0], psycopg.errors.QueryCanceled)
    finally:
        stuck.cancel_safe() if hasattr(stuck, "cancel_safe") else stuck.cancel()
        stuck.close()
