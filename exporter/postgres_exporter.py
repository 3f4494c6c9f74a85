"""postgres_exporter's environment, flags and queries.yaml, read in pgvigil's terms.

A host that ran postgres_exporter keeps its settings where that exporter read them: Debian's
/etc/default/prometheus-postgres-exporter (`DATA_SOURCE_NAME`, `ARGS`), a container's
environment, a unit's command line. `pgvigil serve` reads the same variables and flags:

- `read_settings(args, environ)` parses them (flags win over their variables, as in
  postgres_exporter) into `Settings`, or raises `Refused` for a value pgvigil cannot honour
  (another telemetry path, another metric prefix, several listen addresses) and `UnknownOption`
  for a flag neither exporter has.
- `build_config(settings, config_path, dsn)` makes the `Config` they describe: one target per DSN
  (`databases: all` with --auto-discover-databases), the default packs less the queries of the
  collectors switched off, and the queries of --extend.query-path converted from postgres_exporter's
  queries.yaml format with the metric names postgres_exporter gives them. pgvigil's own flags and
  a --config file win: with a config file only the DSN (when the file has no targets) and the
  converted queries are taken from postgres_exporter's settings.

DSNs and passwords never reach a message: they are kept out of every text this module writes,
and `Settings.secrets` lists them for the log filter (exporter/redaction.py).
See docs/postgres_exporter.md.
"""
from __future__ import annotations

import dataclasses
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict

from exporter.config import (
    RESERVED_LABELS,
    Config,
    ConfigError,
    Defaults,
    MetricSpec,
    MetricType,
    QuerySpec,
    TargetSpec,
    load_config,
    parse_config,
)
from exporter.files import CONFIG_LIMIT, SECRET_LIMIT, UnreadableFile, read_limited, read_text, shown_path
from exporter.redaction import dsn_secrets
from exporter.schema import Checker, did_you_mean
from exporter.yamlsource import LocatedData, YamlSyntaxError, describe_value, format_key_path, load_located, shown

GUIDE = "docs/postgres_exporter.md"
METRICS_PATH = "/metrics"  # the only path pgvigil serves metrics on
METRIC_PREFIX = "pg"


class Refused(Exception):
    """postgres_exporter settings pgvigil cannot honour; `.problems` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class UnknownOption(Exception):
    """A command-line word neither pgvigil nor postgres_exporter knows."""

    def __init__(self, option: str, hint: str | None) -> None:
        super().__init__(option)
        self.option, self.hint = option, hint


# ---------------------------------------------------------------------------
# flags and variables


@dataclass(frozen=True)
class Flag:
    """One postgres_exporter flag: its name without `--`, its variable, and whether it takes a value."""

    name: str
    env: str | None = None
    boolean: bool = False


FLAGS = {flag.name: flag for flag in (
    Flag("web.listen-address", "PG_EXPORTER_WEB_LISTEN_ADDRESS"),
    Flag("web.telemetry-path", "PG_EXPORTER_WEB_TELEMETRY_PATH"),
    Flag("web.config.file"),
    Flag("web.systemd-socket", boolean=True),
    Flag("disable-default-metrics", "PG_EXPORTER_DISABLE_DEFAULT_METRICS", boolean=True),
    Flag("disable-settings-metrics", "PG_EXPORTER_DISABLE_SETTINGS_METRICS", boolean=True),
    Flag("auto-discover-databases", "PG_EXPORTER_AUTO_DISCOVER_DATABASES", boolean=True),
    Flag("exclude-databases", "PG_EXPORTER_EXCLUDE_DATABASES"),
    Flag("include-databases", "PG_EXPORTER_INCLUDE_DATABASES"),
    Flag("extend.query-path", "PG_EXPORTER_EXTEND_QUERY_PATH"),
    Flag("constantLabels", "PG_EXPORTER_CONSTANT_LABELS"),
    Flag("metric-prefix", "PG_EXPORTER_METRIC_PREFIX"),
    Flag("collection-timeout", "PG_EXPORTER_COLLECTION_TIMEOUT"),
    Flag("log.level"),
    Flag("log.format"),
    Flag("config.file"),
    Flag("dumpmaps", boolean=True),
    Flag("wrap-large-counters", boolean=True),
)}

# What a flag accepted only to be set aside means here (logged at startup, never a failure).
NOT_USED = {
    "config.file": "postgres_exporter's auth_modules: pgvigil's /probe takes the names of configured targets only",
    "wrap-large-counters": "pgvigil sends counters as they are",
}

DATA_SOURCE_VARIABLES = ("DATA_SOURCE_NAME", "DATA_SOURCE_URI", "DATA_SOURCE_URI_FILE", "DATA_SOURCE_USER",
                         "DATA_SOURCE_USER_FILE", "DATA_SOURCE_PASS", "DATA_SOURCE_PASS_FILE")
LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "error": "error", "fatal": "error"}
LOG_FORMATS = {"logfmt": "text", "json": "json"}
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")
_TARGET_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass
class Settings:
    """postgres_exporter's settings found in the environment and on the command line.

    `given` names each setting as the user wrote it (`--log.level`, `PG_EXPORTER_...`), for the
    startup log line; `notes` holds what was accepted but has no meaning here."""

    dsns: tuple[str, ...] = field(default=(), repr=False)  # secrets
    dsn_source: str | None = None  # e.g. "DATA_SOURCE_NAME"
    listen: str | None = None  # as pgvigil writes it (":9187" -> "0.0.0.0:9187")
    web_config: str | None = None
    auto_discover: bool = False
    include_databases: tuple[str, ...] = ()
    exclude_databases: tuple[str, ...] = ()
    constant_labels: tuple[tuple[str, str], ...] = ()
    log_level: str | None = None  # pgvigil's names
    log_format: str | None = None
    query_path: str | None = None
    disable_default_metrics: bool = False
    disable_settings_metrics: bool = False
    collectors: dict[str, bool] = field(default_factory=dict)  # explicit --[no-]collector.X, aliases resolved
    collection_timeout: float | None = None
    given: dict[str, str] = field(default_factory=dict)  # setting -> the name it was given under
    notes: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list, repr=False)

    @property
    def shapes_config(self) -> bool:
        """Whether a setting changes what is scraped (else the config is exactly pgvigil's own)."""
        return bool(self.dsns or self.auto_discover or self.constant_labels or self.query_path
                    or self.disable_default_metrics or self.disable_settings_metrics or self.collectors
                    or self.collection_timeout is not None)

    @property
    def empty(self) -> bool:
        return not self.given and not self.notes


def read_settings(args: Iterable[str], environ: Mapping[str, str]) -> Settings:
    """postgres_exporter's flags (`args`: what pgvigil's own options left) and environment.

    Raises UnknownOption for a word neither exporter knows, Refused for values pgvigil cannot honour."""
    reader = _SettingsReader(list(args), environ)
    _read_data_sources(reader.settings, environ, reader.problems)
    for step in (reader.listen_address, reader.fixed_names, reader.refusals, reader.web_and_logging,
                 reader.discovery, reader.queries_and_timeout, reader.unused):
        step()
    if reader.problems:
        raise Refused(reader.problems)
    return reader.settings


class _SettingsReader:
    """One reading of postgres_exporter's settings: every problem is collected, all are reported at once."""

    def __init__(self, args: list[str], environ: Mapping[str, str]) -> None:
        self.flags, self.collector_flags, self.collector_options = _parse_args(args)
        self.environ = environ
        self.settings = Settings()
        self.problems: list[str] = []

    def value(self, name: str) -> tuple[str, str] | None:
        """(the value, the name it came under): the flag's last value, else its variable's."""
        if self.flags.get(name):
            return self.flags[name][-1], f"--{name}"
        env = FLAGS[name].env
        if env and self.environ.get(env, "") != "":
            return self.environ[env], env
        return None

    def boolean(self, name: str) -> bool:
        found = self.value(name)
        if found is None:
            return False
        text, source = found
        if text in _TRUE:
            self.settings.given[name] = source
            return True
        if text in _FALSE:
            return False
        self.problems.append(f"{source}: expected true or false, got {describe_value(text)}")
        return False

    def listen_address(self) -> None:
        addresses = self.flags.get("web.listen-address") or []
        env_address = self.environ.get("PG_EXPORTER_WEB_LISTEN_ADDRESS", "")
        if len(addresses) > 1:
            self.problems.append(f"--web.listen-address: pgvigil listens on one address, got {len(addresses)}; "
                                 "give one (and put a proxy in front for the others)")
        elif addresses or env_address:
            given = addresses[0] if addresses else env_address
            self.settings.given["web.listen-address"] = ("--web.listen-address" if addresses
                                                         else "PG_EXPORTER_WEB_LISTEN_ADDRESS")
            self.settings.listen = "0.0.0.0" + given if given.startswith(":") else given

    def fixed_names(self) -> None:
        """The metrics path and the metric prefix: accepted as pgvigil's own values only."""
        found = self.value("web.telemetry-path")
        if found is not None:
            path, source = found
            if path != METRICS_PATH:
                self.problems.append(f"{source}: pgvigil serves metrics at {METRICS_PATH} only, got {shown(path)}; "
                                     f"set metrics_path: {METRICS_PATH} in Prometheus' scrape config (see {GUIDE})")
            else:
                self.settings.given["web.telemetry-path"] = source
        found = self.value("metric-prefix")
        if found is not None:
            prefix, source = found
            if prefix != METRIC_PREFIX:
                self.problems.append(f"{source}: pgvigil exports postgres_exporter's metric names, which start with "
                                     f"{METRIC_PREFIX}_, got the prefix {shown(prefix)}; rename them in Prometheus "
                                     f"with metric_relabel_configs (see {GUIDE})")
            else:
                self.settings.given["metric-prefix"] = source

    def refusals(self) -> None:
        if self.boolean("web.systemd-socket"):
            self.problems.append("--web.systemd-socket: pgvigil opens its own listening socket; give "
                                 "--web.listen-address instead (and disable the .socket unit)")
        if self.boolean("dumpmaps"):
            self.problems.append("--dumpmaps: postgres_exporter's internal maps do not exist here; "
                                 "`pgvigil check --config FILE --connect` shows what each query returns")

    def web_and_logging(self) -> None:
        found = self.value("web.config.file")
        if found is not None:
            self.settings.web_config, self.settings.given["web.config.file"] = found
        found = self.value("log.level")
        if found is not None:
            level, source = found
            if level in LOG_LEVELS:
                self.settings.log_level, self.settings.given["log.level"] = LOG_LEVELS[level], source
            else:
                self.problems.append(f"{source}: expected one of debug, info, warn, error, got {describe_value(level)}")
        found = self.value("log.format")
        if found is not None:
            fmt, source = found
            if fmt in LOG_FORMATS:
                self.settings.log_format, self.settings.given["log.format"] = LOG_FORMATS[fmt], source
            else:
                self.problems.append(f"{source}: expected logfmt or json, got {describe_value(fmt)}")

    def discovery(self) -> None:
        settings = self.settings
        settings.auto_discover = self.boolean("auto-discover-databases")
        for name in ("include-databases", "exclude-databases"):
            found = self.value(name)
            if found is None:
                continue
            names = tuple(part.strip() for part in found[0].split(",") if part.strip())
            if not names:
                continue
            if not settings.auto_discover:
                settings.notes.append(f"{found[1]}: only with --auto-discover-databases, as in postgres_exporter")
                continue
            settings.given[name] = found[1]
            if name == "include-databases":
                settings.include_databases = names
            else:
                settings.exclude_databases = names
        found = self.value("constantLabels")
        if found is not None:
            settings.constant_labels = _constant_labels(*found, self.problems)
            if settings.constant_labels:
                settings.given["constantLabels"] = found[1]

    def queries_and_timeout(self) -> None:
        settings = self.settings
        found = self.value("extend.query-path")
        if found is not None:
            settings.query_path, settings.given["extend.query-path"] = found
        settings.disable_default_metrics = self.boolean("disable-default-metrics")
        settings.disable_settings_metrics = self.boolean("disable-settings-metrics")
        found = self.value("collection-timeout")
        if found is not None:
            seconds = go_duration(found[0])
            if seconds is None or seconds <= 0:
                self.problems.append(f"{found[1]}: expected a duration such as 1m or 30s, "
                                     f"got {describe_value(found[0])}")
            else:
                settings.collection_timeout, settings.given["collection-timeout"] = seconds, found[1]

    def unused(self) -> None:
        """Flags pgvigil reads but has no use for, and the collectors' switches."""
        for name, reason in NOT_USED.items():
            found = (self.value(name) if not FLAGS[name].boolean
                     else (("", f"--{name}") if name in self.flags else None))
            if found is not None:
                self.settings.notes.append(f"{found[1]}: not used ({reason})")
        for name, state in self.collector_flags.items():
            self.settings.collectors[COLLECTOR_ALIASES.get(name, name)] = state
        for option in self.collector_options:
            self.settings.notes.append(f"--collector.{option}: not used (pgvigil's packs have no such option)")


def _parse_args(args: list[str]) -> tuple[dict[str, list[str]], dict[str, bool], list[str]]:
    """postgres_exporter's command line, as kingpin reads it: `--flag value`, `--flag=value`,
    `--flag`/`--no-flag` for booleans (and `--flag=true`), `--[no-]collector.NAME`, and
    `--collector.NAME.OPTION[=value]`. Returns the flags' values, collector states, collector options."""
    flags: dict[str, list[str]] = {}
    collectors: dict[str, bool] = {}
    options: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        if not word.startswith("--"):
            raise UnknownOption(word, None)
        name, has_value, text = word[2:].partition("=")
        negated = name.startswith("no-") and not has_value
        base = name[3:] if negated else name
        if base.startswith("collector.") and base.count(".") == 1:
            if has_value and text not in _TRUE + _FALSE:
                raise Refused([f"--{base}: expected true or false, got {describe_value(text)}"])
            collectors[base.split(".", 1)[1]] = text in _TRUE if has_value else not negated
            continue
        if base.startswith("collector.") and not negated:
            if not has_value and i < len(args) and not args[i].startswith("--"):
                i += 1  # its value
            options.append(base.split(".", 1)[1])
            continue
        flag = FLAGS.get(base)
        if flag is None or (negated and not flag.boolean):
            raise UnknownOption(word.split("=", 1)[0], did_you_mean(base, FLAGS))
        if flag.boolean:
            flags.setdefault(flag.name, []).append(text if has_value else ("false" if negated else "true"))
            continue
        if not has_value:
            if i >= len(args):
                raise Refused([f"--{flag.name}: expected a value"])
            text = args[i]
            i += 1
        flags.setdefault(flag.name, []).append(text)
    return flags, collectors, options


def go_duration(text: str) -> float | None:
    """Seconds of a Go duration ("1m", "1m30s", "500ms"); None when it is not one."""
    text = text.strip()
    if text == "0":
        return 0.0
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _GO_UNITS[unit] for number, unit in parts)


def _constant_labels(text: str, source: str, problems: list[str]) -> tuple[tuple[str, str], ...]:
    labels: dict[str, str] = {}
    for pair in (part.strip() for part in text.split(",")):
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not _LABEL_NAME.match(name) or name.startswith("__"):
            problems.append(f"{source}: expected label=value pairs separated by commas, got {shown(pair)}")
        elif name in RESERVED_LABELS:
            problems.append(f"{source}: label {shown(name)} is set by pgvigil (each series' target)")
        else:
            labels[name] = value.strip()
    return tuple(labels.items())


def _read_data_sources(settings: Settings, environ: Mapping[str, str], problems: list[str]) -> None:
    """DATA_SOURCE_NAME (comma-separated DSNs), else DATA_SOURCE_URI with the user and password,
    exactly as postgres_exporter assembles them: postgresql://USER:PASS@URI."""
    names = environ.get("DATA_SOURCE_NAME", "")
    if names.strip():
        settings.dsns = tuple(dsn.strip() for dsn in names.split(",") if dsn.strip())
        settings.dsn_source = "DATA_SOURCE_NAME"
    else:
        used: list[str] = []

        def read(variable: str) -> str:
            file_variable = variable + "_FILE"
            path = environ.get(file_variable, "")
            if path:
                used.append(file_variable)
                try:
                    return read_limited(path, SECRET_LIMIT, file_variable).decode("utf-8").strip()
                except UnreadableFile as exc:
                    problems.append(f"{file_variable}: cannot read {shown_path(path)}: {exc.reason}")
                except UnicodeDecodeError as exc:
                    problems.append(f"{file_variable}: cannot read {shown_path(path)}: not UTF-8 text "
                                    f"(byte {exc.start})")
                return ""
            if environ.get(variable, ""):
                used.append(variable)
            return environ.get(variable, "")

        uri, user, password = read("DATA_SOURCE_URI"), read("DATA_SOURCE_USER"), read("DATA_SOURCE_PASS")
        if password:
            settings.secrets.append(password)
        if uri:
            uri = re.sub(r"^\s*postgres(?:ql)?://", "", uri, flags=re.IGNORECASE)
            userinfo = urllib.parse.quote(user, safe="")
            if password:
                userinfo += ":" + urllib.parse.quote(password, safe="")
            settings.dsns = (f"postgresql://{userinfo}@{uri}" if userinfo else f"postgresql://{uri}",)
            settings.dsn_source = " + ".join(used)
        elif used:
            settings.notes.append(f"{', '.join(used)}: not used without DATA_SOURCE_URI (or DATA_SOURCE_URI_FILE), "
                                  "as in postgres_exporter")
    for dsn in settings.dsns:
        settings.secrets.extend(dsn_secrets(dsn))


# ---------------------------------------------------------------------------
# collectors: which of pgvigil's default queries stand for which postgres_exporter collector

# postgres_exporter 0.20's collectors and whether each runs without a flag.
PE_COLLECTORS = {
    "database": True, "locks": True, "replication": True, "replication_slots": True, "roles": True,
    "settings": True, "stat_activity": True, "stat_archiver": True, "stat_bgwriter": True, "stat_database": True,
    "stat_replication": True, "stat_user_tables": True, "statio_user_tables": True, "wal": True,
    "buffercache_summary": False, "database_wraparound": False, "long_running_transactions": False,
    "postmaster": False, "process_idle": False, "stat_activity_autovacuum": False, "stat_checkpointer": False,
    "stat_progress_vacuum": False, "stat_statements": False, "stat_wal_receiver": False,
    "statio_user_indexes": False, "xlog_location": False,
}
# Names of earlier releases: 0.11's bgwriter, 0.12-0.19's replication_slot.
COLLECTOR_ALIASES = {"bgwriter": "stat_bgwriter", "replication_slot": "replication_slots"}
DEFAULT_METRICS = "default"  # postgres_exporter's legacy default metric map, and what only pgvigil exports
# pgvigil query -> the postgres_exporter collectors whose series it exports; a query not listed here
# belongs to DEFAULT_METRICS. A query runs while one of its collectors is on.
QUERY_COLLECTORS: dict[str, tuple[str, ...]] = {
    "pg_database_size": ("database",), "pg_database": ("database",),
    "pg_locks": ("locks",),
    "pg_replication": ("replication",),
    "pg_replication_slots": ("replication_slots",), "pg_replication_slot_positions": ("replication_slots",),
    "pg_replication_slot": ("replication_slots",), "pg_replication_slot_status": ("replication_slots",),
    "pg_roles_connections": ("roles",),
    "pg_settings": ("settings",),
    "pg_postmaster": ("postmaster",),
    "pg_stat_activity": ("stat_activity",),
    "pg_stat_archiver": ("stat_archiver",),
    "pg_stat_bgwriter": ("stat_bgwriter",), "pg_stat_bgwriter_pg17": ("stat_bgwriter",),
    "pg_stat_bgwriter_legacy": ("stat_bgwriter",), "pg_stat_bgwriter_legacy_pg17": ("stat_bgwriter",),
    "pg_stat_checkpointer": ("stat_checkpointer",), "pg_stat_checkpointer_pg18": ("stat_checkpointer",),
    "pg_stat_database": ("stat_database",), "pg_stat_database_sessions": ("stat_database",),
    "pg_stat_database_parallel_workers": ("stat_database",), "pg_stat_database_sessions_legacy": ("stat_database",),
    "pg_stat_replication": ("stat_replication",),
    "pg_stat_progress_vacuum": ("stat_progress_vacuum",), "pg_stat_progress_vacuum_phase": ("stat_progress_vacuum",),
    **{name: ("stat_statements",) for name in (
        "pg_stat_statements", "pg_stat_statements_pg17", "pg_stat_statements_pg12", "pg_stat_statements_slowest",
        "pg_stat_statements_slowest_pg12", "pg_stat_statements_mean_time", "pg_stat_statements_mean_time_pg12")},
    # one query reads pg_stat_user_tables and pg_statio_user_tables
    "pg_stat_user_tables": ("stat_user_tables", "statio_user_tables"),
    "pg_stat_user_tables_sizes": ("stat_user_tables",),
    "pg_wal": ("wal",),
}


def collector_on(settings: Settings, collector: str) -> bool:
    """A collector's flag; without one, on (pgvigil's default packs run it), unless
    --disable-default-metrics asks for postgres_exporter's own defaults."""
    if collector == DEFAULT_METRICS:
        return not settings.disable_default_metrics
    on = settings.collectors.get(collector)
    if on is None:
        on = PE_COLLECTORS.get(collector, False) if settings.disable_default_metrics else True
    if collector == "settings" and settings.disable_settings_metrics:
        return False
    return on


def query_runs(settings: Settings, query: QuerySpec) -> bool:
    return any(collector_on(settings, c) for c in QUERY_COLLECTORS.get(query.name, (DEFAULT_METRICS,)))


def collector_notes(settings: Settings) -> list[str]:
    """What each --[no-]collector.X flag means here, for collectors with nothing to switch."""
    served = {c for owners in QUERY_COLLECTORS.values() for c in owners}
    notes = []
    for name, on in settings.collectors.items():
        if name in served:
            continue
        flag = f"--{'' if on else 'no-'}collector.{name}"
        if name in PE_COLLECTORS:
            notes.append(f"{flag}: not used (pgvigil has no query for postgres_exporter's {name} collector)")
        else:
            notes.append(f"{flag}: not used (not a postgres_exporter collector pgvigil knows)")
    return notes


# ---------------------------------------------------------------------------
# queries.yaml -> pgvigil queries

USAGES = {"GAUGE": MetricType.GAUGE, "COUNTER": MetricType.COUNTER, "LABEL": None, "DISCARD": None}
NOT_CONVERTED = {
    "MAPPEDMETRIC": "maps text values to numbers: return the number from the SQL "
                    "(CASE col WHEN 'a' THEN 1 ... END) and use GAUGE",
    "DURATION": "parses a duration text: return the milliseconds from the SQL "
                "(EXTRACT(EPOCH FROM col) * 1000) and use GAUGE",
    "HISTOGRAM": "reads buckets the SQL computed: move the query to a pgvigil config, whose histograms "
                 "observe one value per row",
}
PE_QUERY_KEYS = ("query", "metrics", "master", "cache_seconds", "runonserver")
PE_METRIC_KEYS = ("usage", "description", "mapping")
CONVERTED = "<queries.yaml converted>"  # the generated document's name in the checker's messages
_CONVERTED_ERROR = re.compile(r"^" + re.escape(CONVERTED) + r"(?::\d+)?: queries\[(\d+)\](\S*): (.*)\Z", re.DOTALL)
_VERSION = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?\Z")
_RANGE_PART = re.compile(r"^(>=|<=|==|!=|>|<|=|!)?(.+)\Z")


@dataclass(frozen=True)
class Origin:
    """Where a converted query came from in queries.yaml: its namespace and the lines of its parts."""

    namespace: str
    line: int
    query_line: int
    labels: tuple[str, ...]
    columns: dict[str, tuple[str, int]]  # column -> its key path (`pg_x.metrics[2].count`) and line


@dataclass(frozen=True)
class ConvertedQueries:
    source: str
    queries: tuple[QuerySpec, ...]
    origins: dict[str, Origin]  # by query name
    warnings: tuple[str, ...]


class _QueriesYaml(Checker):
    """Walks a postgres_exporter queries.yaml, collecting located errors and warnings."""

    def __init__(self, doc: LocatedData) -> None:
        super().__init__(doc)
        self.warned: list[str] = []

    def warn(self, path: tuple, message: str) -> None:
        before = len(self.located.messages)
        self.located.add(path, message)
        self.warned.append(self.located.messages.pop(before))

    def convert(self) -> tuple[list[dict], list[Origin]]:
        data = self.doc.data
        if not isinstance(data, dict):
            self.error((), f"expected a mapping of query names to queries, got {describe_value(data)}")
            return [], []
        queries, origins = [], []
        for namespace, body in data.items():
            converted = self.query(namespace, body)
            if converted is not None:
                queries.append(converted[0])
                origins.append(converted[1])
        return queries, origins

    def query(self, namespace: Any, body: Any) -> tuple[dict, Origin] | None:
        path: tuple = (namespace,)
        if not isinstance(body, dict):
            self.error(path, f"expected a mapping with query: and metrics:, got {describe_value(body)}")
            return None
        for key in body:
            if key not in PE_QUERY_KEYS:
                hint = did_you_mean(str(key), PE_QUERY_KEYS)
                self.warn(path + (key,), "unknown key ignored, as postgres_exporter does"
                                         + (f"; did you mean {shown(hint)}?" if hint else ""))
        before = len(self.errors)
        sql = body.get("query")
        if not isinstance(sql, str) or not sql.strip():
            self.error(path + ("query",) if "query" in body else path,
                       "expected the query's SQL as a string" if "query" in body else "missing required key 'query'")
        query: dict[str, Any] = {"name": str(namespace), "sql": sql}
        if body.get("master") is not None and self.typed(body["master"], path + ("master",), "bool"):
            query["scope"] = "cluster"  # postgres_exporter runs it in the DSN's database only
        if body.get("cache_seconds") is not None:
            seconds = self.typed(body["cache_seconds"], path + ("cache_seconds",), "int")
            if seconds:
                query["ttl"] = seconds
        if body.get("runonserver") is not None:
            query.update(self.server_versions(body["runonserver"], path + ("runonserver",)))
        labels, metrics, lines = self.columns(body.get("metrics"), path + ("metrics",), "metrics" in body)
        if len(self.errors) > before:
            return None
        if not metrics:
            self.warn(path + ("metrics",), "no GAUGE or COUNTER column: the query exports nothing and is left out")
            return None
        query["labels"] = labels
        query["metrics"] = metrics
        origin = Origin(str(namespace), self.doc.line_of(path) or 0, self.doc.line_of(path + ("query",)) or 0,
                        tuple(labels), lines)
        return query, origin

    def columns(self, value: Any, path: tuple, given: bool
                ) -> tuple[list[str], dict[str, dict], dict[str, tuple[str, int]]]:
        labels: list[str] = []
        metrics: dict[str, dict] = {}
        lines: dict[str, tuple[str, int]] = {}
        if not isinstance(value, list):
            self.error(path if given else path[:-1],
                       f"expected a list of columns ('- name: {{usage: GAUGE}}'), got {describe_value(value)}"
                       if given else "missing required key 'metrics'")
            return labels, metrics, lines
        for i, item in enumerate(value):
            ipath = path + (i,)
            if not isinstance(item, dict) or len(item) != 1:
                self.error(ipath, "expected one column name with its usage, e.g. '- count: {usage: GAUGE}', "
                                  f"got {describe_value(item)}")
                continue
            (column, spec), = item.items()
            cpath = ipath + (column,)
            if column in lines:
                self.error(cpath, f"column {shown(column)} is listed twice")
                continue
            lines[str(column)] = (format_key_path(cpath), self.doc.line_of(cpath) or 0)
            if not isinstance(spec, dict):
                self.error(cpath, f"expected usage: and description:, got {describe_value(spec)}")
                continue
            for key in spec:
                if key not in PE_METRIC_KEYS:
                    self.warn(cpath + (key,), "unknown key ignored, as postgres_exporter does")
            usage = spec.get("usage")
            name = usage.upper() if isinstance(usage, str) else None
            if name in NOT_CONVERTED:
                self.error(cpath + ("usage",), f"usage {name} is not converted: it {NOT_CONVERTED[name]} (see {GUIDE})")
                continue
            if name not in USAGES:
                hint = did_you_mean(name, USAGES) if name else None
                self.error(cpath + ("usage",) if "usage" in spec else cpath,
                           f"expected usage LABEL, GAUGE, COUNTER or DISCARD, got {describe_value(usage)}"
                           + (f"; did you mean {shown(hint)}?" if hint else "")
                           if "usage" in spec else "missing required key 'usage'")
                continue
            description = spec.get("description")
            if description is not None and not isinstance(description, str):
                self.error(cpath + ("description",), f"expected a string, got {describe_value(description)}")
                continue
            if name == "LABEL":
                labels.append(str(column))
            elif name != "DISCARD":
                metric: dict[str, Any] = {"type": str(USAGES[name])}
                if description:
                    metric["help"] = description
                metrics[str(column)] = metric
        return labels, metrics, lines

    def server_versions(self, value: Any, path: tuple) -> dict[str, int]:
        """`runonserver: ">=9.6.0 <13.0.0"` as min_server_version/max_server_version."""
        if not isinstance(value, str):
            self.error(path, f"expected a version range such as '>=10.0.0', got {describe_value(value)}")
            return {}
        if "||" in value:
            self.error(path, "a range with || is not converted: split the query in two, one range each")
            return {}
        bounds: dict[str, int] = {}
        for part in value.split():
            match = _RANGE_PART.match(part)
            version = server_version_num(match.group(2)) if match else None
            operator = (match.group(1) if match else None) or "="
            if version is None or operator in ("!=", "!"):
                self.error(path, f"expected version bounds such as '>=10.0.0 <16.0.0', got {shown(value)}")
                return {}
            low = {">=": version, ">": version + 1, "=": version, "==": version}.get(operator)
            high = {"<=": version, "<": version - 1, "=": version, "==": version}.get(operator)
            if low is not None:
                bounds["min_server_version"] = max(low, bounds.get("min_server_version", low))
            if high is not None:
                bounds["max_server_version"] = min(high, bounds.get("max_server_version", high))
        return bounds


def server_version_num(version: str) -> int | None:
    """PostgreSQL's server_version_num of a semantic version as postgres_exporter reads the server's:
    9.6.24 -> 90624; 15.4 (15.4.0) -> 150004."""
    match = _VERSION.match(version.strip())
    if not match:
        return None
    major, minor, patch = (int(part or 0) for part in match.groups())
    return major * 10000 + minor if major >= 10 else major * 10000 + minor * 100 + patch


def convert_queries(path: str, targets: tuple[TargetSpec, ...], defaults: Defaults | None = None) -> ConvertedQueries:
    """The queries of a postgres_exporter queries.yaml, checked as pgvigil queries.

    Raises ConfigError listing every problem as `FILE:LINE: namespace.key: message`, in the file's terms.
    `targets` are the targets they will run on (their constant labels must not clash with the queries'),
    `defaults` the config's (timeouts, limits)."""
    try:
        doc = load_located(read_text(path, CONFIG_LIMIT, "query file"), path)
    except UnreadableFile as exc:
        raise ConfigError([f"{exc} (--extend.query-path)"]) from None
    except YamlSyntaxError as exc:
        raise ConfigError([str(exc)]) from None
    walker = _QueriesYaml(doc)
    queries, origins = walker.convert()
    errors = list(walker.located.in_file_order())
    specs: tuple[QuerySpec, ...] = ()
    if queries:
        stub = {t.name: {"dsn": "", "labels": dict(t.labels)} for t in targets if t.parent is None}
        document = {"collectors": [], "targets": stub or None, "queries": queries,
                    "defaults": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in dataclasses.asdict(defaults or Defaults()).items()}}
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        try:
            specs = parse_config(text, source=CONVERTED).queries
        except ConfigError as exc:
            errors += [_in_file_terms(message, path, origins) for message in exc.errors]
    if errors:
        raise ConfigError(sorted(errors, key=_line_of))
    return ConvertedQueries(path, specs, {o.namespace: o for o in origins}, tuple(walker.warned))


def _in_file_terms(message: str, path: str, origins: list[Origin]) -> str:
    """A checker message about the generated document, pointed at the queries.yaml line it came from."""
    match = _CONVERTED_ERROR.match(message)
    if not match or int(match.group(1)) >= len(origins):
        return f"{path}: {message}"
    origin, rest, text = origins[int(match.group(1))], match.group(2), match.group(3)
    where, line = origin.namespace, origin.line
    column = None
    if rest == ".sql":
        where, line = f"{origin.namespace}.query", origin.query_line
    elif rest.startswith(".labels[") and rest.endswith("]") and rest[8:-1].isdigit() \
            and int(rest[8:-1]) < len(origin.labels):
        column = origin.labels[int(rest[8:-1])]
    elif rest.startswith(".metrics."):
        column = rest[len(".metrics."):].split(".", 1)[0]
    if column in origin.columns:
        where, line = origin.columns[column]
    return f"{path}:{line}: {where}: {text}"


def _line_of(message: str) -> int:
    parts = message.split(":", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


# ---------------------------------------------------------------------------
# the config


@dataclass(frozen=True)
class Built:
    """The config postgres_exporter's settings describe, and what was taken from them or set aside."""

    config: Config
    taken: tuple[str, ...] = ()  # "--auto-discover-databases (databases: all)"
    notes: tuple[str, ...] = ()  # accepted, not used, or what a converted query replaced
    warnings: tuple[str, ...] = ()  # located: what postgres_exporter would also have ignored in queries.yaml


def build_config(settings: Settings, config_path: str | None, dsn: str | None) -> Built:
    """The config to serve: pgvigil's own (--config, --dsn) where given, postgres_exporter's settings for
    the rest. Raises ConfigError like load_config."""
    if config_path is not None:
        return _with_config_file(settings, config_path, dsn)
    if not settings.shapes_config:
        return Built(load_config(None, dsn=dsn), tuple(_taken_plain(settings)), tuple(settings.notes))
    taken: list[str] = []
    notes: list[str] = list(settings.notes) + collector_notes(settings)
    dsns: tuple[str, ...]
    if dsn:
        dsns = (dsn,)
        if settings.dsns:
            notes.append(f"{settings.dsn_source}: not used (--dsn or PGVIGIL_DSN wins)")
    elif settings.dsns:
        dsns = settings.dsns
    else:
        dsns = ("",)  # libpq's PG* environment
    names = target_names(dsns)
    targets: dict[str, dict[str, Any]] = {}
    for name in names:
        target: dict[str, Any] = {"dsn": ""}
        if settings.constant_labels:
            target["labels"] = dict(settings.constant_labels)
        if settings.auto_discover:
            target["databases"] = [_literal_pattern(d) for d in settings.include_databases] or "all"
            if settings.exclude_databases:
                target["exclude_databases"] = [_literal_pattern(d) for d in settings.exclude_databases]
        targets[name] = target
    document: dict[str, Any] = {"targets": targets, "collectors": ["default"]}
    if settings.collection_timeout is not None:
        document["defaults"] = {"scrape_timeout": settings.collection_timeout}
    config = parse_config(yaml.safe_dump(document, sort_keys=False), source="<postgres_exporter settings>")
    by_name = dict(zip(names, dsns))
    config = dataclasses.replace(config, targets=tuple(dataclasses.replace(t, dsn=by_name[t.name])
                                                       for t in config.targets))
    if settings.dsns and not dsn:
        taken.append(f"{settings.dsn_source} ({_counted(len(names), 'target')}: {', '.join(names)})")
    for name, meaning in (("auto-discover-databases", "databases: all"),
                          ("include-databases", "databases: " + ", ".join(settings.include_databases)),
                          ("exclude-databases", "exclude_databases: " + ", ".join(settings.exclude_databases)),
                          ("constantLabels", "labels: " + ", ".join(f"{k}={v}" for k, v in settings.constant_labels)),
                          ("collection-timeout", f"scrape_timeout {settings.collection_timeout:g}s"
                           if settings.collection_timeout is not None else "")):
        if name in settings.given:
            taken.append(f"{settings.given[name]} ({meaning})")
    kept = tuple(q for q in config.queries if q.pack is None or query_runs(settings, q))
    left_out = sorted({q.name for q in config.queries} - {q.name for q in kept})
    switches = [settings.given[n] for n in ("disable-default-metrics", "disable-settings-metrics")
                if n in settings.given]
    switches += [f"--{'' if on else 'no-'}collector.{c}" for c, on in settings.collectors.items()
                 if c in {o for owners in QUERY_COLLECTORS.values() for o in owners}]
    if switches:
        taken.append(f"{', '.join(switches)} ({_counted(len(left_out), 'query', 'queries')} of the default packs "
                     f"left out{': ' + ', '.join(left_out) if left_out else ''})")
    config = dataclasses.replace(config, queries=kept)
    warnings: list[str] = []
    if settings.query_path:
        config, warnings = _with_converted(config, settings, taken, notes)
    return Built(config, tuple(taken + _taken_plain(settings)), tuple(notes), tuple(warnings))


def _with_config_file(settings: Settings, config_path: str, dsn: str | None) -> Built:
    """--config wins: postgres_exporter's DSN serves when the file has no targets (and --dsn is not
    given), and --extend.query-path's queries join the file's; the rest is set aside."""
    taken: list[str] = []
    notes = list(settings.notes)
    single = settings.dsns[0] if len(settings.dsns) == 1 and not dsn else None
    config = load_config(config_path, dsn=dsn or single)
    if single is not None and config.targets == (TargetSpec(name="default", dsn=single),):
        taken.append(f"{settings.dsn_source} (target default)")
    elif settings.dsns:
        why = "--dsn or PGVIGIL_DSN wins" if dsn else "the config file's targets win" \
            if len(settings.dsns) == 1 else "several DSNs: declare them as targets in the config file"
        notes.append(f"{settings.dsn_source}: not used ({why})")
    for name in ("auto-discover-databases", "include-databases", "exclude-databases", "constantLabels",
                 "disable-default-metrics", "disable-settings-metrics", "collection-timeout"):
        if name in settings.given:
            notes.append(f"{settings.given[name]}: not used (the config file decides targets and packs)")
    notes += [f"--{'' if on else 'no-'}collector.{c}: not used (the config file's collectors: decides)"
              for c, on in settings.collectors.items()]
    warnings: list[str] = []
    if settings.query_path:
        config, warnings = _with_converted(config, settings, taken, notes)
    return Built(config, tuple(taken + _taken_plain(settings)), tuple(notes), tuple(warnings))


def _with_converted(config: Config, settings: Settings, taken: list[str], notes: list[str]) -> tuple[Config, list[str]]:
    """The config with queries.yaml's queries: they replace the packs' queries exporting the same
    names (as a queries.yaml namespace replaced postgres_exporter's built-in one), and give way to
    the config file's own queries. Appends to `taken` and `notes`; returns the file's warnings."""
    assert settings.query_path is not None
    converted = convert_queries(settings.query_path, config.targets, config.defaults)
    own = [q for q in config.queries if q.pack is None]
    packs = [q for q in config.queries if q.pack is not None]
    own_names = {name: q for q in own for name in series_names(q)}
    added = []
    for query in converted.queries:
        clash = next((own_names[n] for n in series_names(query) if n in own_names), None)
        origin = converted.origins[query.name]
        if clash is not None:
            notes.append(f"{converted.source}:{origin.line}: {origin.namespace}: left out: the config file's query "
                         f"{shown(clash.name)} exports the same names (the config file wins)")
        else:
            added.append(query)
    names = {name: q for q in added for name in series_names(q)}
    replaced = []
    for query in packs:
        by = next((names[n] for n in series_names(query) if n in names), None)
        if by is not None:
            replaced.append(query)
            notes.append(f"{converted.source}: {by.name} replaces pgvigil's query {query.name} "
                         f"(pack {query.pack}): both export {next(n for n in series_names(query) if n in names)}")
    packs = [q for q in packs if q not in replaced]
    taken_names = {q.name for q in own + packs}
    for i, query in enumerate(added):
        if query.name in taken_names:  # a pack query of that name exports other series: both run
            name, n = f"{query.name}_queries_yaml", 2
            while name in taken_names:
                name, n = f"{query.name}_queries_yaml_{n}", n + 1
            notes.append(f"{converted.source}: {query.name} runs as query {name} (pgvigil's query {query.name} "
                         "exports other series); its metric names are unchanged")
            added[i] = dataclasses.replace(query, name=name)
    config = dataclasses.replace(config, queries=tuple(own + added + packs))
    taken.append(f"{settings.given['extend.query-path']} {converted.source} "
                 f"({_counted(len(added), 'query', 'queries')}: {', '.join(q.name for q in added) or 'none'})")
    return config, list(converted.warnings)


def series_names(query: QuerySpec) -> set[str]:
    """Every sample name a query writes (a histogram X writes X_bucket, X_count and X_sum)."""
    return {metric.name + suffix for metric in query.metrics for suffix in _suffixes(metric)}


def _suffixes(metric: MetricSpec) -> tuple[str, ...]:
    if metric.type is MetricType.HISTOGRAM:
        return ("_bucket", "_count", "_sum")
    if metric.type is MetricType.GAUGE_HISTOGRAM:
        return ("_bucket", "_gcount", "_gsum")
    return ("",)


def _taken_plain(settings: Settings) -> list[str]:
    """The settings accepted because they ask for what pgvigil does anyway."""
    return [f"{settings.given[name]} ({value})" for name, value in (("web.telemetry-path", METRICS_PATH),
                                                                     ("metric-prefix", METRIC_PREFIX))
            if name in settings.given]


def target_names(dsns: tuple[str, ...]) -> list[str]:
    """`default` for one DSN (as --dsn names it); for several, `host-port` (plus the database
    when two share a server), so the target label tells them apart."""
    if len(dsns) == 1:
        return ["default"]
    described = []
    for i, dsn in enumerate(dsns):
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:  # it will not connect either; its error says why
            described.append((f"dsn{i + 1}", ""))
            continue
        host = str(params.get("host") or params.get("hostaddr") or "localhost")
        port = str(params.get("port") or "5432")
        described.append((_safe(f"{host}-{port}") or f"dsn{i + 1}", _safe(str(params.get("dbname") or ""))))
    names: list[str] = []
    for server, dbname in described:
        shared = sum(1 for other, _ in described if other == server) > 1
        name = f"{server}-{dbname}" if shared and dbname else server
        base, n = name, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _safe(text: str) -> str:
    return _TARGET_NAME_UNSAFE.sub("_", text).strip("_")


def _literal_pattern(name: str) -> str:
    """A database name as a `databases:` glob that matches that name only."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _counted(number: int, noun: str, plural: str = "") -> str:
    return f"{number} {noun if number == 1 else (plural or noun + 's')}"


def file_sets_listen(config_path: str) -> bool:
    """Whether a (valid) config file sets `listen:` itself, which wins over --web.listen-address."""
    try:
        doc = load_located(read_text(config_path, CONFIG_LIMIT, "config file"), config_path)
    except (UnreadableFile, YamlSyntaxError):
        return False
    return isinstance(doc.data, dict) and "listen" in doc.data
