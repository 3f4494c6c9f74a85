"""A thread per target with a `log:` section, reading in the background, and the collector on /metrics.

Reading never waits for a scrape and a scrape never waits for reading: the thread adds to the
counters under a lock, a scrape copies them. The threads stop on reload and exit (`close`), saving
their positions first. After a reload, a target whose log is read as before (same DSN, same `log:`)
counts on from where it was: its new reader starts at the saved positions with the old counters, so
no counter resets.
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
from exporter.serverlog.metrics import BY_NAME, family_name
from exporter.serverlog.reader import LogReader, Parser
from exporter.serverlog.source import FileSource, LogSource, SourceError, SqlSource
from exporter.serverlog.spec import LogSpec
from exporter.serverlog.stderr import PrefixError, StderrParser, forgeable

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

    def __init__(self, target: TargetSpec, spec: LogSpec, counters: LogCounters | None = None) -> None:
        self.target, self.spec = target, spec
        self.labels = (("target", target.configured_name), *target.labels)
        self.counters = counters or LogCounters()
        self.classifier = Classifier(self.counters, spec.client_network_label)
        self.link = ServerLink(target.dsn)
        self.reader: LogReader | None = None
        self._settings: LogSettings | None = None
        self._names_at = 0.0
        self._stop = threading.Event()
        self._reported: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"pgvigil-log-{target.name}", daemon=True)

    @property
    def reading(self) -> tuple[str, str, LogSpec]:
        """What this follower reads and how: a follower after a reload with the same may continue its counts."""
        return self.target.name, self.target.dsn, self.spec

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
            except Exception as exc:  # a bug must not end the thread: logged, the next cycle tries again.
                # The type only: an exception's text could quote a line of the log.
                log.error("log reader of target %s failed: %s", loggable(self.target.name), type(exc).__name__)
                with self.counters.lock:
                    self.counters.source_errors.add(("internal",))
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
        if fmt == "stderr" and self._settings is not None and forgeable(self._settings.line_prefix):
            log.warning("server log of target %s: stderr with %%u or %%d in log_line_prefix lets any client "
                        "forge log lines through its user or database name; use csvlog or jsonlog (docs/logs.md)",
                        loggable(self.target.name))
        source: LogSource
        if self.spec.source == "file":
            assert self.spec.path is not None  # checked by spec.check_log
            source = FileSource(self.spec.path)
        else:
            assert self._settings is not None  # sql: settings were read, or _refresh raised
            if self._settings.directory is None:
                raise SourceError("log_directory_hidden")  # the role lacks pg_read_all_settings
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

    def continue_from(self, previous: Iterable[object]) -> None:
        """Before start, after a reload: each follower reading what a previous one read takes its counters."""
        counted = {f.reading: f.counters for c in previous if isinstance(c, ServerLogCollector) for f in c.followers}
        self.followers = [LogFollower(f.target, f.spec, counted[f.reading]) if f.reading in counted else f
                          for f in self.followers]

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

    def add(name: str, labels: dict[str, str], value: float, sample: str | None = None) -> None:
        metric = BY_NAME[name]
        family = family_name(metric)
        if family not in fams:
            fams[family] = Metric(family, metric.help, metric.type)
        fams[family].add_sample(sample or name, labels, value)

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
            add("pg_log_messages_total", {**base, "severity": severity, "sqlstate": code}, value)
        labels = BY_NAME["pg_log_authentication_failures_total"].labels
        for key, value in sorted(failures.items()):
            add("pg_log_authentication_failures_total", {**base, **dict(zip(labels, key))}, value)
        for name in SIMPLE:
            add(f"pg_log_{name}_total", base, simple.get(name, 0.0))
        for name, store in BY_KIND.items():
            label = BY_NAME[name].labels[0]
            for (kind,), value in sorted(kinds[store].items()):
                add(name, {**base, label: kind}, value)
        histogram = "pg_log_statement_duration_seconds"
        for bound, count in buckets:
            add(histogram, {**base, "le": bound}, float(count), histogram + "_bucket")
        add(histogram, base, float(buckets[-1][1]), histogram + "_count")
        add(histogram, base, total, histogram + "_sum")
        add("pgvigil_log_read_bytes_total", base, read_bytes)
        add("pgvigil_log_lines_total", base, entries)
        add("pgvigil_log_parse_errors_total", base, errors)
        add("pgvigil_log_backlog_bytes", base, backlog)
        for (reason,), value in sorted(rotations.items()):
            add("pgvigil_log_files_rotated_total", {**base, "reason": reason}, value)
        for (reason,), value in sorted(source_errors.items()):
            add("pgvigil_log_source_errors_total", {**base, "reason": reason}, value)
        add("pgvigil_log_readable", base, 1.0 if readable is None else 0.0)
    return list(fams.values())


# Counters of LogCounters.simple, each pg_log_<name>_total.
SIMPLE = ("connections", "disconnections", "deadlocks", "checkpoints_too_frequent", "temp_files", "temp_file_bytes",
          "lock_waits", "too_many_connections", "panics", "crash_recoveries")
# Counters by one label -> their store in LogCounters.by_kind.
BY_KIND = {"pg_log_autovacuum_runs_total": "autovacuum_runs",
           "pg_log_autovacuum_duration_seconds_total": "autovacuum_seconds",
           "pg_log_statement_cancellations_total": "cancellations"}
