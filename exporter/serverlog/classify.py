"""One log entry -> counter increments. Texts are matched and dropped here; only counts leave.

PostgreSQL's messages are matched in English: the server must log with `lc_messages = 'C'` (or an
English locale), as pgBadger also requires (docs/logs.md). Labels are bounded: a severity from a fixed
set, a SQLSTATE kept exactly for the first codes seen and folded into its class after, a user or a
database only when the server knows that name (a failed login's user may be a mistyped password).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Callable

from exporter.serverlog.counters import LogCounters

SEVERITIES = frozenset(("DEBUG", "DEBUG1", "DEBUG2", "DEBUG3", "DEBUG4", "DEBUG5", "LOG", "INFO", "NOTICE",
                        "WARNING", "ERROR", "FATAL", "PANIC"))
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
# Exact codes kept per target; a code first seen after this many is counted as its class (`23xxx` -> `23000`).
MAX_EXACT_CODES = 100
# The SQLSTATE classes PostgreSQL defines (errcodes.txt); a class outside them is `other`.
CLASSES = frozenset(("00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z", "20", "21", "22",
                     "23", "24", "25", "26", "27", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D", "3F",
                     "40", "42", "44", "53", "54", "55", "57", "58", "72", "F0", "HV", "P0", "XX"))
_AUTH_FAILED = re.compile(r"(\w+) authentication failed for user ")
_AUTH_METHODS = {"password": "password", "ident": "ident", "peer": "peer", "pam": "pam", "ldap": "ldap",
                 "certificate": "cert", "gssapi": "gss", "sspi": "sspi", "radius": "radius", "bsd": "bsd"}
_DURATION = re.compile(r"duration: (\d+(?:\.\d+)?) ms  (?:statement|execute )")
_TEMP_SIZE = re.compile(r'temporary file: path ".*", size (\d+)', re.DOTALL)
_ELAPSED = re.compile(r"elapsed: (\d+(?:\.\d+)?) s")
# Messages known by text, for a stderr prefix without %e: their code (docs/logs.md lists them).
KNOWN_CODES = (
    ("password authentication failed", "28P01"), ("authentication failed for user", "28000"),
    ("no pg_hba.conf entry", "28000"), ("pg_hba.conf rejects connection", "28000"),
    ("deadlock detected", "40P01"), ("canceling statement due to statement timeout", "57014"),
    ("canceling statement due to user request", "57014"), ("canceling statement due to lock timeout", "55P03"),
    ("sorry, too many clients already", "53300"), ("remaining connection slots are reserved", "53300"),
    ("terminating connection due to idle-in-transaction timeout", "25P03"),
)


def client_network(host: str) -> str:
    """The client's network, never its address: IPv4 /24, IPv6 /48, `local` for a Unix socket."""
    if not host or host == "[local]":
        return "local"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "other"  # a host name (log_hostname): not exported
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class Classifier:
    """Feeds one target's counters; `roles` and `databases` are the names the server knows (read by SQL)."""

    def __init__(self, counters: LogCounters, network_label: bool = False) -> None:
        self.counters = counters
        self.network_label = network_label
        self.roles: frozenset[str] = frozenset()
        self.databases: frozenset[str] = frozenset()
        self.exact_codes: set[str] = set()
        self.labels: dict[str, str] = {}  # a code seen before -> its label (the hot path: one lookup)

    def code_label(self, severity: str, sqlstate: str | None, message: str) -> str:
        if sqlstate is not None:
            label = self.labels.get(sqlstate)
            if label is None:
                label = self.labels[sqlstate] = self.new_code(sqlstate) if len(self.labels) < 4096 else "other"
            return label
        if severity in ("LOG", "INFO", "NOTICE", "DEBUG") or severity.startswith("DEBUG"):
            return "00000"
        for text, code in KNOWN_CODES:
            if text in message:
                return code
        return "unknown"

    def new_code(self, sqlstate: str) -> str:
        if not _SQLSTATE.fullmatch(sqlstate):
            return "other"
        if sqlstate in self.exact_codes:
            return sqlstate
        if len(self.exact_codes) < MAX_EXACT_CODES:
            self.exact_codes.add(sqlstate)
            return sqlstate
        return sqlstate[:2] + "000" if sqlstate[:2] in CLASSES else "other"

    def __call__(self, severity: str, sqlstate: str | None, user: str, database: str, message: str,
                 client: str) -> None:
        """Called with the counters' lock held (the reader takes it once per chunk, not per entry)."""
        if severity not in SEVERITIES:
            severity = "other"
        code = self.code_label(severity, sqlstate, message)
        self.counters.messages.add((severity, code))
        handler = _HANDLERS.get(severity)
        if handler is not None:
            # The entry's own code, not its label: once any client raised MAX_EXACT_CODES codes of its
            # own (RAISE ... USING ERRCODE), 40P01 would be labelled 40000 and no deadlock counted.
            handler(self, code if sqlstate is None else sqlstate, user, database, message, client)

    # -- by severity -------------------------------------------------------
    def log(self, code: str, user: str, database: str, message: str, client: str) -> None:
        # One dict lookup on the first word picks the only pattern worth trying: most LOG lines match none.
        kind = _LOG_FIRST_WORDS.get(message[:message.find(" ")] if " " in message[:16] else "")
        if kind is None:
            return
        counters = self.counters
        if kind == "duration":
            found = _DURATION.match(message)
            if found:
                counters.durations.observe(float(found.group(1)) / 1000.0)
        elif kind == "connection":
            if message.startswith("connection authorized"):
                counters.bump("connections")
        elif kind == "disconnection":
            counters.bump("disconnections")
        elif kind == "checkpoints":
            if message.startswith("checkpoints are occurring too frequently"):
                counters.bump("checkpoints_too_frequent")
        elif kind == "temporary":
            found = _TEMP_SIZE.match(message)
            if found:
                counters.bump("temp_files")
                counters.bump("temp_file_bytes", float(found.group(1)))
        elif kind == "process":
            if " still waiting for " in message:
                counters.bump("lock_waits")
        elif kind == "automatic":
            run = ("vacuum" if message.startswith("automatic vacuum of table")
                   else "analyze" if message.startswith("automatic analyze of table") else None)
            if run is not None:
                counters.by_kind["autovacuum_runs"].add((run,))
                found = _ELAPSED.search(message)
                if found:
                    counters.by_kind["autovacuum_seconds"].add((run,), float(found.group(1)))
        elif kind == "database" and "automatic recovery in progress" in message:
            counters.bump("crash_recoveries")

    def error(self, code: str, user: str, database: str, message: str, client: str) -> None:
        counters = self.counters
        if code == "40P01":
            counters.bump("deadlocks")
        elif code == "57014":
            reason = ("statement_timeout" if "statement timeout" in message
                      else "user_request" if "user request" in message else "other")
            counters.by_kind["cancellations"].add((reason,))
        elif code == "55P03" and "lock timeout" in message:
            counters.by_kind["cancellations"].add(("lock_timeout",))

    def fatal(self, code: str, user: str, database: str, message: str, client: str) -> None:
        counters = self.counters
        if code in ("28P01", "28000"):
            method = self.auth_method(message)
            if method is None:
                return
            key: tuple[str, ...] = (user if user in self.roles else "unknown",
                   database if database in self.databases else "unknown", method)
            if self.network_label:
                key += (client_network(client),)
            counters.auth_failures.add(key)
        elif code == "53300":
            counters.bump("too_many_connections")
        elif code == "25P03":
            counters.by_kind["cancellations"].add(("idle_in_transaction_timeout",))

    def panic(self, code: str, user: str, database: str, message: str, client: str) -> None:
        self.counters.bump("panics")

    @staticmethod
    def auth_method(message: str) -> str | None:
        found = _AUTH_FAILED.match(message)
        if found:
            return _AUTH_METHODS.get(found.group(1).lower(), "other")
        if message.startswith("no pg_hba.conf entry"):
            return "no_hba_entry"
        if message.startswith("pg_hba.conf rejects connection"):
            return "hba_reject"
        if message.startswith('role "'):  # trust or peer let the name through; the role check refused it
            if message.endswith('" does not exist'):
                return "unknown_role"
            if message.endswith('" is not permitted to log in'):
                return "login_not_permitted"
        return None


_LOG_FIRST_WORDS = {word + (":" if word in ("duration", "disconnection") else ""): word for word in (
    "duration", "connection", "disconnection", "checkpoints", "temporary", "process", "automatic", "database")}

_HANDLERS: dict[str, Callable[..., None]] = {
    "LOG": Classifier.log, "ERROR": Classifier.error, "FATAL": Classifier.fatal, "PANIC": Classifier.panic,
}
