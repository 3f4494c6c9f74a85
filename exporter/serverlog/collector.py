"""A thread per target with a `log:` section, reading in the background, and the collector on /metrics.

Reading never waits for a scrape and a scrape never waits for reading: the thread adds to the
counters under a lock, a scrape copies them. The threads stop on reload and exit (`close`), saving
their positions first; a reload starts new counters (Prometheus reads the reset as one).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Iterator

from prometheus_client.core import Metric

from exporter.config import Config, TargetSpec
from exporter.logs import loggable
from exporter.serverlog import csvlog, jsonlog, positions
from exporter.serverlog.classify import Classifier
from exporter.serverlog.counters import LogCounters
from exporter.serverlog.link import LogSettings, ServerLink
from exporter.serverlog.reader import LogReader, Parser
from exporter.serverlog.source import FileSource, LogSource, SourceError, SqlSource
from exporter.serverlog.spec import LogSpec
from exporter.serverlog.stderr import PrefixError, StderrParser

log = logging.getLogger(__name__)

NAMES_EVERY = 60.0  # seconds between readings of the roles and databases the server has
STOP_WAIT = 10.0


def resolve_format(spec: LogSpec, settings: LogSettings | None) -> str | None:
    """The format to read: the configured one, or from log_destination (csvlog, then jsonlog, then stderr)."""
    if spec.format != "auto":
        return spec.format
    if settings is None:
        return None
    destinations = {d.strip() for d in settings.destination.split(",")}
    for fmt in ("csvlog", "jsonlog", "stderr"):
        if fmt in destinations:
            return fmt
    return None


def parser_for(fmt: str, settings: LogSettings | None) -> Parser | None:
    if fmt == "csvlog":
        return csvlog.parse
    if fmt == "jsonlog":
        return jsonlog.parse
    if settings is None:
        return None
    return StderrParser(settings.line_prefix).parse


class LogFollower:
    """One target's log: its reading thread, counters and state file."""

    def __init__(self, target: TargetSpec, spec: LogSpec) -> None:
        self.target, self.spec = target, spec
        self.labels = (("target", target.configured_name), *target.labels)
        self.counters = LogCounters()
        self.classifier = Classifier(self.counters, spec.client_network_label)
        self.link = ServerLink(target.dsn)
        self.reader: LogReader | None = None
        self._settings: LogSettings | None = None
        self._names_at = 0.0
        self._stop = threading.Event()
        self._reported: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"pgvigil-log-{target.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(STOP_WAIT)
        self.link.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.cycle()
            except Exception:  # a bug must not end the thread silently: logged, the next cycle tries again
                log.exception("log reader of target %s failed", loggable(self.target.name))
            self._stop.wait(max(0.0, self.spec.interval - (time.monotonic() - started)))
        if self.reader is not None and self.reader.positions is not None:
            positions.save(self.spec.state_file, self.reader.positions)

    def cycle(self) -> None:
        """Refresh what is known of the server, then read; a failure is a reason, counted and logged once."""
        try:
            self._refresh()
            reader = self.reader or self._make_reader()
            if reader is None:
                return
            reader.cycle(self.spec.budget)
            if reader.positions is not None:
                positions.save(self.spec.state_file, reader.positions)
            self._readable(None)
        except SourceError as exc:
            self._readable(exc.reason)

    def _refresh(self) -> None:
        """Settings (once) and the known names (every minute). Through SQL only; a file source reads on
        without them (names then show as `unknown`) unless it needs the stderr prefix."""
        now = time.monotonic()
        if self._settings is not None and now - self._names_at < NAMES_EVERY:
            return
        try:
            if self._settings is None:
                self._settings = self.link.settings()
            roles, databases = self.link.names()
            self.classifier.roles, self.classifier.databases = roles, databases
            self._names_at = now
        except SourceError as exc:
            if self.spec.source == "sql":
                raise
            with self.counters.lock:
                self.counters.source_errors.add(("server_" + exc.reason,))

    def _make_reader(self) -> LogReader | None:
        fmt = resolve_format(self.spec, self._settings)
        if fmt is None:
            raise SourceError("format_unknown" if self._settings is None else "no_file_destination")
        try:
            parser = parser_for(fmt, self._settings)
        except PrefixError:
            raise SourceError("prefix_unsupported") from None
        if parser is None:
            raise SourceError("prefix_unknown")
        source: LogSource
        if self.spec.source == "file":
            assert self.spec.path is not None  # checked by spec.check_log
            source = FileSource(self.spec.path)
        else:
            assert self._settings is not None  # sql: settings were read, or _refresh raised
            source = SqlSource(self.link, self._settings.directory)
        self.reader = LogReader(source, fmt, parser, self.classifier, self.counters,
                                positions.load(self.spec.state_file))
        return self.reader

    def _readable(self, reason: str | None) -> None:
        with self.counters.lock:
            self.counters.readable = reason
            if reason is not None:
                self.counters.source_errors.add((reason,))
        if reason != self._reported:
            if reason is None:
                log.info("reading the server log of target %s", loggable(self.target.name))
            else:
                log.warning("server log of target %s not readable: %s (docs/logs.md)",
                            loggable(self.target.name), reason)
            self._reported = reason


class ServerLogCollector:
    """The counters of every target's log, for the process registry (server.extra_collectors)."""

    def __init__(self, followers: Iterable[LogFollower]) -> None:
        self.followers = list(followers)

    def start(self) -> "ServerLogCollector":
        for follower in self.followers:
            follower.start()
        return self

    def close(self) -> None:
        for follower in self.followers:
            follower._stop.set()  # all at once: each then finishes its cycle in parallel
        for follower in self.followers:
            follower.stop()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.followers))


def followers_of(config: Config) -> list[LogFollower]:
    return [LogFollower(t, t.log) for t in config.targets if t.log is not None]


def families(followers: list[LogFollower]) -> list[Metric]:
    """Every family once, each target's samples with its own labels (targets may differ in label names)."""
    fams: dict[str, Metric] = {}

    def add(kind: str, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        if name not in fams:
            fams[name] = Metric(name, doc, kind)
        fams[name].add_sample(name + ("_total" if kind == "counter" else ""), labels, value)

    for follower in followers:
        base = dict(follower.labels)
        c = follower.counters
        with c.lock:
            messages = dict(c.messages.values)
            failures = dict(c.auth_failures.values)
            simple = dict(c.simple)
            kinds = {k: dict(v.values) for k, v in c.by_kind.items()}
            buckets, total = c.durations.cumulative(), c.durations.sum
            read_bytes, entries, errors, backlog = c.read_bytes, c.entries, c.parse_errors, c.backlog_bytes
            rotations, source_errors, readable = dict(c.rotations.values), dict(c.source_errors.values), c.readable
        for (severity, code), value in sorted(messages.items()):
            add("counter", "pg_log_messages", "Server log entries by severity and SQLSTATE (rare codes folded "
                "into their class)", {**base, "severity": severity, "sqlstate": code}, value)
        auth_labels = ("user", "database", "method", "client_network")
        for key, value in sorted(failures.items()):
            add("counter", "pg_log_authentication_failures", "Failed logins by user, database and method (a name "
                "the server does not have: unknown)", {**base, **dict(zip(auth_labels, key))}, value)
        for name, doc in SIMPLE:
            add("counter", f"pg_log_{name}", doc, base, simple.get(name, 0.0))
        for name, label, doc in BY_KIND:
            for (kind,), value in sorted(kinds[KIND_STORE[name]].items()):
                add("counter", f"pg_log_{name}", doc, {**base, label: kind}, value)
        name = "pg_log_statement_duration_seconds"
        doc = "Statement executions slower than log_min_duration_statement, by duration"
        if name not in fams:
            fams[name] = Metric(name, doc, "histogram")
        for bound, count in buckets:
            fams[name].add_sample(name + "_bucket", {**base, "le": bound}, float(count))
        fams[name].add_sample(name + "_count", base, float(buckets[-1][1]))
        fams[name].add_sample(name + "_sum", base, total)
        add("counter", "pgvigil_log_read_bytes", "Bytes of server log read", base, read_bytes)
        add("counter", "pgvigil_log_lines", "Server log entries parsed", base, entries)
        add("counter", "pgvigil_log_parse_errors", "Server log lines that are not entries of the format (or "
            "entries too long to keep)", base, errors)
        add("gauge", "pgvigil_log_backlog_bytes", "Server log bytes not read yet (the budget per interval was "
            "spent)", base, backlog)
        for (reason,), value in sorted(rotations.items()):
            add("counter", "pgvigil_log_files_rotated", "Log files that appeared, were renamed, truncated or "
                "deleted, by reason", {**base, "reason": reason}, value)
        for (reason,), value in sorted(source_errors.items()):
            add("counter", "pgvigil_log_source_errors", "Failed reads of the server log by reason",
                {**base, "reason": reason}, value)
        add("gauge", "pgvigil_log_readable", "Whether the latest read of the server log succeeded (0: not read "
            "yet, or see pgvigil_log_source_errors_total)", base, 1.0 if readable is None else 0.0)
    return list(fams.values())


SIMPLE = (
    ("connections", "Connections authorized (log_connections)"),
    ("disconnections", "Sessions ended (log_disconnections)"),
    ("deadlocks", "Deadlocks detected (ERROR 40P01)"),
    ("checkpoints_too_frequent", "Checkpoints occurring too frequently (checkpoint_warning)"),
    ("temp_files", "Temporary files written (log_temp_files)"),
    ("temp_file_bytes", "Bytes of temporary files written (log_temp_files)"),
    ("lock_waits", "Lock waits longer than deadlock_timeout (log_lock_waits)"),
    ("too_many_connections", "Connections refused: too many clients (FATAL 53300)"),
    ("panics", "PANIC entries: the server crashed"),
    ("crash_recoveries", "Starts in automatic crash recovery"),
)
BY_KIND = (
    ("autovacuum_runs", "kind", "Autovacuum and autoanalyze runs logged (log_autovacuum_min_duration)"),
    ("autovacuum_duration_seconds", "kind", "Seconds of the logged autovacuum and autoanalyze runs"),
    ("statement_cancellations", "reason", "Statements cancelled, by reason (statement_timeout, lock_timeout, "
     "user_request, idle_in_transaction_timeout)"),
)
KIND_STORE = {"autovacuum_runs": "autovacuum_runs", "autovacuum_duration_seconds": "autovacuum_seconds",
              "statement_cancellations": "cancellations"}
