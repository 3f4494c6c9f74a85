"""Giving up on a query: ask the server to cancel it, then cut a socket a stalled network holds.

Both return within their grace periods whatever the network does, so a scrape's deadline holds."""
from __future__ import annotations

import socket
import threading
from typing import Any

import psycopg

from exporter.scrape.transaction import connect_pinned

# Seconds the watchdog lets its cancel request try to reach the server before it cuts the socket.
CANCEL_GRACE_SECONDS = 1.0

# Only a pgvigil backend of this role: behind a pooler the pid a session knows may be the pooler's.
_CANCEL_BACKEND = ("SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity"
                   " WHERE pid = %s AND application_name IN ('pgvigil', 'pgvigil-sampler') AND usename = current_user")


def cancel_on_server(dsn: str, conn: Any) -> None:
    """pg_cancel_backend of the connection's backend, from a connection of its own, in a thread
    given CANCEL_GRACE_SECONDS (connecting may hang with the network; nothing else waits for it)."""
    try:
        pid = conn.info.backend_pid
    except psycopg.Error:
        return
    canceller = threading.Thread(target=_cancel_backend, args=(dsn, pid), name="pgvigil-cancel", daemon=True)
    canceller.start()
    canceller.join(CANCEL_GRACE_SECONDS)


def _cancel_backend(dsn: str, pid: int) -> None:
    try:
        # Not the read-only sessions' settings, but no tenant's timeout either (transaction_timeout would end
        # this session before the cancel runs): transaction.py's versioned settings, as startup options.
        conn = connect_pinned(dsn, lambda options: psycopg.connect(
            dsn, connect_timeout=2, application_name="pgvigil cancel", autocommit=True, options=options),
            base={"search_path": "pg_catalog"})
    except psycopg.Error:
        return
    try:
        conn.execute(_CANCEL_BACKEND, (pid,))
    except psycopg.Error:
        pass
    finally:
        conn.close()


def cut_socket(conn: Any) -> None:
    """Unblock a read stuck on a stalled network by shutting the connection's socket down."""
    try:
        sock = socket.socket(fileno=conn.fileno())
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()
    except (OSError, psycopg.Error, ValueError):
        pass
