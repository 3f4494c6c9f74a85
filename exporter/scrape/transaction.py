"""What pgvigil sends around a query so that nothing a previous query did reaches it.

Every statement goes through the extended query protocol (psycopg's pipeline mode: one statement
per Parse, so the server itself refuses a second one, whatever lexing settings it was told to use).
One run of a query is one pipeline, so one round trip:

    RESET ALL                                        every setting back to the connection's own
    SELECT pg_catalog.set_config(..., true), ...     read-only, timeouts, search_path, role, and
                                                     pg_advisory_unlock_all()
    [prelude]                                        e.g. the server time for {{previous_run}}
    query

all in the pipeline's implicit transaction, committed at its Sync (a failed statement rolls it
back). A query that calls `set_config(..., false)` changes a setting for the session: the next
run's RESET ALL undoes it before the next query is even parsed. What RESET ALL cannot reset
(the role) and what makes a setting dangerous (standard_conforming_strings changes how the next
text is lexed; search_path which function a name calls) are pinned again by the second statement.
The connection's own values (what RESET ALL returns to) are startup options (`STARTUP_OPTIONS`, and
the versioned ones `connect_pinned` adds once the server says its version), which outrank the database's
and the role's defaults, so a tenant owning a database cannot set them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

# Settings given at connection start: RESET ALL returns to these. Each one changes what a query
# means or how its text and results are read, so none may come from the database or the role.
STARTUP_SETTINGS = {
    "default_transaction_read_only": "on",
    "idle_in_transaction_session_timeout": "60000",
    "standard_conforming_strings": "on",  # the lexing sqlshape.py checks with
    "DateStyle": "ISO,MDY",  # how timestamps are sent as text (the driver reads ISO)
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",  # floats exactly, not rounded to 15 digits
    "bytea_output": "hex",
    # ... and what would stall a transaction: a read-only one that is serializable and deferrable waits for a
    # safe snapshot, that is while any serializable transaction of the cluster stays open (a tenant's can)
    "default_transaction_isolation": "read committed",
    "default_transaction_deferrable": "off",
}
# ... or end the session. Settings newer servers know: an unknown name in the startup packet refuses the
# connection, so each one is given only once the server's version is known (connect_pinned).
VERSIONED_SETTINGS = (
    (140000, "idle_session_timeout", "0"),
    (170000, "transaction_timeout", "0"),
)


def startup_options(server_version: int = 0, extra: dict[str, str] | None = None,
                    base: dict[str, str] = STARTUP_SETTINGS) -> str:
    """The libpq `options` string for a server of `server_version` (0: any version): `base` (the read-only
    sessions' settings; the backups' own), the versioned settings, then `extra`."""
    settings = {**base, **{name: value for since, name, value in VERSIONED_SETTINGS
                           if server_version >= since}, **(extra or {})}
    return " ".join(f"-c {name}={_escaped(value)}" for name, value in settings.items())


def _escaped(value: str) -> str:
    # libpq splits `options` at spaces that are not escaped with a backslash
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


STARTUP_OPTIONS = startup_options()

C = TypeVar("C", bound=psycopg.Connection)
# The version each server (host, port) last said, so later connections pin everything at once.
_server_versions: dict[tuple[str, str], int] = {}


def connect_pinned(dsn: str, connect: Callable[[str], C], extra: dict[str, str] | None = None,
                   base: dict[str, str] = STARTUP_SETTINGS) -> C:
    """`connect(options)` with the startup options for the server's version: the server says its version
    at connect (before any query), so a server newer than known is reconnected to once, with its own.
    `dsn` only names the server for that memory."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {}
    key = (str(params.get("hostaddr") or params.get("host") or ""), str(params.get("port") or ""))
    known = _server_versions.get(key, 0)
    try:
        conn = connect(startup_options(known, extra, base))
    except psycopg.Error:
        _server_versions.pop(key, None)  # a server downgraded since refuses a setting it does not know
        raise
    version = conn.info.server_version
    _server_versions[key] = version
    if startup_options(version, extra, base) == startup_options(known, extra, base):
        return conn
    conn.close()
    return connect(startup_options(version, extra, base))


RESET = "RESET ALL"
# Read-only before the snapshot (so the query cannot switch it back), bounded, names resolved through
# `search_path` only, as the session's own role (RESET ALL leaves a role set by set_config), and no
# advisory lock left from a previous query. Every name qualified: search_path is not pinned yet.
PIN = ("SELECT pg_catalog.set_config('transaction_read_only', 'on', true),"
       " pg_catalog.set_config('statement_timeout', %s, true),"
       " pg_catalog.set_config('lock_timeout', %s, true),"
       " pg_catalog.set_config('search_path', %s, true),"
       " pg_catalog.set_config('role', 'none', false),"
       " pg_catalog.pg_advisory_unlock_all()")


@dataclass(frozen=True)
class NameScope:
    """Where a query's unqualified names resolve: pg_catalog first, always; then the schema of the
    extension the query requires (the shipped packs), or the role's own search_path (the user's
    queries, which name their own tables); pg_temp last, so no temporary table shadows a catalog."""

    extension: str | None = None
    role_path: bool = False


OWN_SQL = NameScope()  # pgvigil's own statements: pg_catalog only


def search_path(scope: NameScope, role_path: str, extension_schemas: dict[str, str]) -> str:
    """The search_path a query runs with (see NameScope); `role_path` is the session's at connect."""
    parts = ["pg_catalog"]
    if scope.extension is not None and scope.extension in extension_schemas:
        parts.append(quote_identifier(extension_schemas[scope.extension]))
    if scope.role_path:
        if role_path.strip():
            parts.append(role_path)
        # Managed platforms keep extensions in a schema of their own (Supabase: `extensions`), which a
        # monitoring role's search_path often lacks: the user's queries find extension views there too.
        parts += [quote_identifier(schema) for schema in sorted(set(extension_schemas.values()))]
    parts.append("pg_temp")
    return ", ".join(dict.fromkeys(part for part in parts if part != '"pg_catalog"'))


def pin_parameters(timeout: float, lock_timeout: float, path: str) -> Sequence[Any]:
    return [f"{int(timeout * 1000)}ms", f"{int(lock_timeout * 1000)}ms", path]


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
