"""YAML config -> frozen dataclasses, with every error located by file, line and key.

Validation runs in two passes: shape and types first, then cross-references
(targets a query names exist, a metric column is not also a label, buckets are
sorted, metric names do not clash). All errors are collected and reported at
once; nothing downstream re-validates.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from exporter import sqlshape
from exporter.files import CONFIG_LIMIT, SECRET_LIMIT, UnreadableFile, read_limited, read_text
from exporter.schema import MAX_DURATION_SECONDS as MAX_DURATION_SECONDS  # re-exported for callers
from exporter.schema import Checker, Key, Section, did_you_mean
from exporter.schema import parse_duration as parse_duration
from exporter.serverlog.spec import LOG_KEYS, LogSpec, check_log
from exporter.yamlsource import (
    LocatedData,
    LocatedErrors,
    YamlSyntaxError,
    describe_value,
    load_located,
    shown,
    shown_list,
)

PACKS_DIR = Path(__file__).parent / "packs"
DEFAULT_LISTEN = "127.0.0.1:9187"
LISTEN_EXPECTED = "expected host:port such as 127.0.0.1:9187 (a port from 0 to 65535)"
SCOPES = ("database", "cluster")
PREVIOUS_RUN_PLACEHOLDER = "{{previous_run}}"
# In a query's SQL, the text[] of `defaults.exclude_schemas`: `WHERE schemaname <> ALL ({{excluded_schemas}})`.
EXCLUDED_SCHEMAS_PLACEHOLDER = "{{excluded_schemas}}"
# In a query with `pick:`, the ids its pick chose: an array literal such as '{16384,16390}'.
PICKED_PLACEHOLDER = "{{picked}}"
# Schemas managed platforms create in the user's databases: their tables are the platform's, not the user's.
PLATFORM_SCHEMAS = (
    # Supabase
    "auth", "storage", "realtime", "_realtime", "supabase_functions", "supabase_migrations", "graphql",
    "graphql_public", "vault", "pgsodium", "pgsodium_masks", "extensions", "net", "cron", "pgbouncer",
    # Amazon RDS and Aurora extensions (aws_s3, aws_lambda)
    "aws_commons", "aws_s3", "aws_lambda",
)
RESERVED_LABELS = ("target",)
# What a target is: a PostgreSQL server, or PgBouncer's admin console (exporter/scrape/console.py).
KINDS = ("postgres", "pgbouncer")
# The only text a `kind: pgbouncer` query may hold: each is a read-only console command.
CONSOLE_COMMANDS = ("SHOW VERSION", "SHOW POOLS", "SHOW STATS", "SHOW STATS_TOTALS", "SHOW DATABASES",
                    "SHOW LISTS", "SHOW CONFIG")

# \Z, not $: `$` also matches before a trailing newline (a YAML `|` block), which Prometheus rejects.
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")
# pgvigil's own series: a query producing one would make Prometheus reject the whole scrape.
RESERVED_METRIC_NAMES = ("pg_up", "pgbouncer_up", "pg_exporter_last_scrape_error")
RESERVED_METRIC_PREFIXES = ("pgvigil_", "process_", "python_")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"B": 1, **{f"{p}B": 1000 ** (i + 1) for i, p in enumerate("KMGTP")},
               **{f"{p}IB": 1024 ** (i + 1) for i, p in enumerate("KMGTP")}}


class MetricType(str, Enum):
    """How a metric column is exposed; a str, so `m.type == "gauge"` and dict lookups by name still work."""

    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE_HISTOGRAM = "gauge_histogram"  # one observation per row, a fresh snapshot each run

    def __str__(self) -> str:
        # Python 3.11 formats a str-mixin Enum as 'MetricType.GAUGE' in f-strings; exposition needs the value.
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_histogram(self) -> bool:
        return self in (MetricType.HISTOGRAM, MetricType.GAUGE_HISTOGRAM)


METRIC_TYPES = tuple(t.value for t in MetricType)


# ---------------------------------------------------------------------------
# every key, declared once: validation, defaults and the README's key lists come from these tables

class _FromDefaults:
    """A query option whose default is the same key of `defaults:` (`zero_too`: 0 also means the default)."""

    def __init__(self, zero_too: bool = False) -> None:
        self.zero_too = zero_too

    def __repr__(self) -> str:
        return "the same key of defaults:"


FROM_DEFAULTS = _FromDefaults()
NONZERO_FROM_DEFAULTS = _FromDefaults(zero_too=True)  # 0 would switch the limit off: pgvigil never does

TOP_KEYS = Section(
    "top level",
    Key("listen", "str", DEFAULT_LISTEN, doc="`host:port` to serve `/metrics` on"),
    Key("targets", doc="databases by name (below); default: one target named `default` from `--dsn` or PG* env"),
    Key("defaults", doc="defaults for every query (below)"),
    Key("collectors", default=("default",), doc="shipped query packs: `[default]`, pack names, or `[]` for none"),
    Key("queries", doc="your own queries (below)"),
    Key("backup", doc="scheduled `pg_dump` backups, see [docs/backups.md](docs/backups.md)"),
)
# The sampler's interval: below 100ms its own cost would show; above an hour it would say nothing.
MIN_SAMPLE_INTERVAL, MAX_SAMPLE_INTERVAL = 0.1, 3600.0
TARGET_KEYS = Section(
    "`targets.<name>` (or just the DSN string)",
    Key("dsn", doc="libpq URL or key=value string; `${VAR}` and `${VAR:-default}` are expanded"),
    Key("dsn_file", doc="a file holding the DSN (e.g. a mounted secret), instead of `dsn`"),
    Key("labels", doc="constant labels on every series of this target"),
    Key("kind", "str", "postgres", doc="`postgres` (the default), or `pgbouncer`: the DSN names PgBouncer's admin "
                                        "console (`dbname=pgbouncer`), see [docs/pgbouncer.md](docs/pgbouncer.md)"),
    Key("pool_size", "int", 1, doc="connections to this target, 1 to 64; queries are spread across them"),
    Key("storage_allocation", doc="disk or plan size such as `8GiB`, for the storage utilization alert"),
    Key("databases", doc="`all`, or database names and glob patterns: monitor each matching database of the "
                         "server, see [docs/discovery.md](docs/discovery.md)"),
    Key("exclude_databases", doc="glob patterns of databases `databases` never monitors"),
    Key("connection_budget", "int", 5, doc="with `databases`: connections open to the server at once, 1 to 64 "
                                           "(discovery's own included); default 5"),
    Key("discovery_interval", "duration", 60.0, doc="with `databases`: how often the database list is read "
                                                     "again; default 60s"),
    Key("sample_interval", default=1.0, doc="how often pg_stat_activity is sampled between scrapes (one connection "
                                            "per server, see [docs/diagnosis.md](docs/diagnosis.md)); `0` or `off`: "
                                            "not sampled; default 1s"),
    Key("sample_top", default=100, doc="label sets (and statements) the sampler exports as themselves, 1 to 1000; "
                                      "the rest add up in `other` rows; default 100"),
    Key("log", doc="read the server's log into counters (failed logins, errors by code, slow statements), see "
                   "[docs/logs.md](docs/logs.md)"),
)
DEFAULT_KEYS = Section(
    "`defaults`",
    Key("timeout", "duration", 5.0, doc="`statement_timeout` of each query (server side); default 5s"),
    Key("lock_timeout", "duration", 1.0, doc="`lock_timeout`: never queue behind an ALTER TABLE for long; default 1s"),
    Key("connect_timeout", "duration", 5.0, doc="connection timeout; default 5s"),
    Key("ttl", "duration", 0.0, doc="0: run on every scrape; more: serve the last results that long; default 0s"),
    Key("max_series", "int", 10000, doc="rows per query (label sets for histograms); more are dropped, "
                                          "`reason=\"cardinality\"`; default 10000"),
    Key("max_label_bytes", "int", 2048, doc="longest label value in bytes; a row with a longer one is dropped, "
                                            "`reason=\"cardinality\"`; default 2048"),
    Key("max_query_bytes", "int", 16 * 1024 * 1024, doc="a query's exposition text per target in bytes; series past "
                                                        "it are dropped, `reason=\"cardinality\"`; default 16MiB"),
    Key("exclude_schemas", default=PLATFORM_SCHEMAS,
        doc="schemas the per-table, index and security packs leave out (`{{excluded_schemas}}` in a query); "
            "default: the managed platforms' own, see [docs/platforms.md](docs/platforms.md)"),
    Key("scrape_timeout", "duration", 10.0, doc="upper bound of a scrape; Prometheus' "
                                                "`X-Prometheus-Scrape-Timeout-Seconds` lowers it; default 10s"),
)
QUERY_KEYS = Section(
    "`queries[]`",
    Key("name", "str", required=True, doc="metric names are `<name>_<column>`"),
    Key("help", "str", doc="HELP text of its metrics; default: the name"),
    Key("sql", "str", required=True, doc="one `SELECT`, `WITH`, `VALUES` or `TABLE` query (with `kind: pgbouncer`: "
                                         "one of " + ", ".join(f"`{c}`" for c in CONSOLE_COMMANDS) + ")"),
    Key("kind", "str", "postgres", doc="the kind of target it runs on: `postgres` (the default) or `pgbouncer`"),
    Key("labels", doc="columns that become labels"),
    Key("metrics", required=True, doc="column name -> metric (below)"),
    Key("ttl", "duration", FROM_DEFAULTS, doc="default: `defaults.ttl`"),
    Key("timeout", "duration", NONZERO_FROM_DEFAULTS, doc="default: `defaults.timeout`"),
    Key("lock_timeout", "duration", NONZERO_FROM_DEFAULTS, doc="default: `defaults.lock_timeout`"),
    Key("targets", doc="target names it runs on; default: all targets"),
    Key("min_server_version", "int", doc="skipped on servers older than this `server_version_num`, e.g. 130000"),
    Key("max_server_version", "int", doc="skipped on servers newer than this `server_version_num`"),
    Key("scope", default="database", doc="`database` (the default), or `cluster`: runs once per server even "
                                         "when several targets share it"),
    Key("requires_extension", "str", doc="skipped, not failed, where this extension is absent"),
    Key("optional", "bool", False, doc="`true`: skipped, not failed, where a table, view, function or schema it "
                                      "reads is absent or the role may not read it (the shipped packs are); "
                                      "default `false`: your query fails, counted, and `check --connect` says why"),
    Key("max_series", "int", NONZERO_FROM_DEFAULTS, doc="default: `defaults.max_series`"),
    Key("max_label_bytes", "int", NONZERO_FROM_DEFAULTS, doc="default: `defaults.max_label_bytes`"),
    Key("max_query_bytes", "int", NONZERO_FROM_DEFAULTS, doc="default: `defaults.max_query_bytes`"),
    Key("top_changed", doc="`{by: <counter column>, limit: K}`: export the K rows whose `by` grew most since the "
                           "previous run, the rest summed into rows whose last label is `other` "
                           "(see [docs/statements.md](docs/statements.md))"),
    Key("sql_labels", doc="labels holding SQL text (pg_stat_statements' `query`): rebuilt from PostgreSQL's own "
                          "tokens before anything else sees them, every constant as `$n`, comments dropped "
                          "(see [docs/statements.md](docs/statements.md))"),
    Key("pick", doc="`{sql, every}`: choose the rows to read every `every` (e.g. the 200 largest of 5,000 tables) "
                    "and read only those on each run, through `{{picked}}` in `sql` (see `queries[].pick` below)"),
    Key("allow_calls", doc="functions the SQL may call although a read-only transaction does not stop their effect, "
                           "from the few that allow it: " + ", ".join(f"`{f}`" for f in sqlshape.OPT_IN)
                           + " (every other such call is refused; see [docs/security.md](docs/security.md))"),
)
PICK_KEYS = Section(
    "`queries[].pick`",
    Key("sql", "str", required=True, doc="one read-only query whose first column holds integers (oids, pids): "
                                         "`{{picked}}` in the query's `sql` becomes their array literal, "
                                         "e.g. `WHERE c.oid = ANY ({{picked}})`; at most `max_series` of them"),
    Key("every", "duration", 300.0, doc="how often the pick runs again; between picks each run reads the same "
                                        "ids (a dropped one just returns no row); default 5m"),
)
METRIC_KEYS = Section(
    "`queries[].metrics.<column>`",
    Key("type", default=MetricType.GAUGE, doc=f"{', '.join(f'`{t}`' for t in METRIC_TYPES)}; default `gauge`"),
    Key("help", "str", doc="HELP text; default: the query's help"),
    Key("buckets", doc="histogram upper bounds in increasing order, e.g. `[0.1, 0.5, 1]`"),
    Key("default", "number", doc="the value used when the column is NULL (else the sample is omitted)"),
    Key("name", doc="the full metric name, overriding `<query>_<column>`"),
)
BACKUP_KEYS = Section(
    "`backup`",
    Key("dir", "str", required=True, doc="backups and the state file live here"),
    Key("target", "str", doc="the target to dump; default: the only one"),
    Key("keep_days", "int", doc="retention: `prune` keeps backups younger than this many days"),
    Key("keep_last", "int", doc="retention: `prune` also keeps this many newest backups"),
    Key("interval", "duration", 86400.0, doc="how often backups are expected to run (the age alerts); default 24h"),
    Key("offsite_dir", "str", doc="an off-site second copy (an NFS/SMB/USB mount)"),
    Key("s3", doc="an off-site copy in S3: bucket, prefix, endpoint_url, ..."),
    Key("sanity_query", "str", doc="run in the test restore; must return true"),
)
PACK_KEYS = Section(
    "query pack file",
    Key("description", doc="one line about the pack"),
    Key("default", default=True, doc="false: only loaded when named in `collectors`"),
    Key("queries", doc="queries, as in the config"),
)
SECTIONS: tuple[Section, ...] = (TOP_KEYS, TARGET_KEYS, DEFAULT_KEYS, QUERY_KEYS, PICK_KEYS, METRIC_KEYS, BACKUP_KEYS)
SECTIONS += (LOG_KEYS,)  # exporter/serverlog/spec.py


def _checkable_sql(sql: str) -> str:
    """A query's SQL with its placeholders replaced by what they become, as the session will send it."""
    return sql.replace(PREVIOUS_RUN_PLACEHOLDER, "now()").replace(PICKED_PLACEHOLDER, "'{}'")


def key_reference() -> str:
    """The README's key lists, generated from the tables (tests/test_config.py keeps them equal)."""
    return "\n\n".join(f"**{section.title}**\n\n{section.markdown()}" for section in SECTIONS)


class ConfigError(Exception):
    """Invalid configuration; `.errors` lists every problem as `file:line: key: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class TargetSpec:
    name: str
    dsn: str = field(repr=False)  # may hold a password: never log or render it
    kind: str = TARGET_KEYS["kind"].default  # postgres, or pgbouncer: its admin console
    labels: tuple[tuple[str, str], ...] = ()
    pool_size: int = TARGET_KEYS["pool_size"].default
    storage_allocation_bytes: float | None = None  # the disk or plan limit, for storage utilization alerts
    databases: tuple[str, ...] = ()  # glob patterns ('*' for `all`): a discovery root (exporter/scrape/discovery.py)
    exclude_databases: tuple[str, ...] = ()
    connection_budget: int = TARGET_KEYS["connection_budget"].default
    discovery_interval: float = TARGET_KEYS["discovery_interval"].default
    sample_interval: float = TARGET_KEYS["sample_interval"].default  # 0: the sampler is off (scrape/sampler.py)
    sample_top: int = TARGET_KEYS["sample_top"].default
    parent: str | None = None  # a discovered database: the configured target it was found from
    datname: str | None = None
    log: LogSpec | None = None  # the server log read into counters (exporter/serverlog)

    @property
    def discovers(self) -> bool:
        return bool(self.databases)

    @property
    def configured_name(self) -> str:
        """The name in the config: the `target` label, and what a query's `targets:` names."""
        return self.parent or self.name


@dataclass(frozen=True)
class MetricSpec:
    column: str
    name: str
    type: MetricType
    help: str
    buckets: tuple[float, ...] = ()
    default: float | None = None


@dataclass(frozen=True)
class TopChanged:
    """A query's `top_changed`: the `limit` rows whose counter `by` grew most since the previous run."""

    by: str
    limit: int


@dataclass(frozen=True)
class Pick:
    """A query's `pick`: the SQL choosing the ids `{{picked}}` stands for, run again every `every` seconds."""

    sql: str
    every: float


@dataclass(frozen=True)
class QuerySpec:
    name: str
    help: str
    sql: str
    labels: tuple[str, ...]
    metrics: tuple[MetricSpec, ...]
    ttl: float
    timeout: float
    lock_timeout: float
    targets: tuple[str, ...] | None
    min_server_version: int | None
    max_server_version: int | None
    scope: str
    requires_extension: str | None
    max_series: int
    max_label_bytes: int = DEFAULT_KEYS["max_label_bytes"].default
    max_query_bytes: int = DEFAULT_KEYS["max_query_bytes"].default
    pack: str | None = None
    top_changed: TopChanged | None = None
    kind: str = QUERY_KEYS["kind"].default  # the kind of target it runs on
    pick: Pick | None = None
    sql_labels: tuple[str, ...] = ()  # labels whose values are SQL text, masked (exporter/sqltext.py)
    optional: bool = False  # a missing object or privilege skips it (capability.py) instead of failing it
    # Where the query is written (`file:line`), for errors only the server can find (a missing column).
    origin: str = field(default="", compare=False)

    @property
    def uses_previous_run(self) -> bool:
        return PREVIOUS_RUN_PLACEHOLDER in self.sql

    @property
    def sql_texts(self) -> tuple[str, ...]:
        """Every SQL text the query sends: its own, and its pick's."""
        return (self.sql,) if self.pick is None else (self.sql, self.pick.sql)

    def runs_on_version(self, server_version: int) -> bool:
        if self.min_server_version is not None and server_version < self.min_server_version:
            return False
        if self.max_server_version is not None and server_version > self.max_server_version:
            return False
        return True


@dataclass(frozen=True)
class Defaults:
    timeout: float = DEFAULT_KEYS["timeout"].default
    lock_timeout: float = DEFAULT_KEYS["lock_timeout"].default
    connect_timeout: float = DEFAULT_KEYS["connect_timeout"].default
    ttl: float = DEFAULT_KEYS["ttl"].default
    max_series: int = DEFAULT_KEYS["max_series"].default
    max_label_bytes: int = DEFAULT_KEYS["max_label_bytes"].default
    max_query_bytes: int = DEFAULT_KEYS["max_query_bytes"].default
    scrape_timeout: float = DEFAULT_KEYS["scrape_timeout"].default
    exclude_schemas: tuple[str, ...] = PLATFORM_SCHEMAS


@dataclass(frozen=True)
class BackupConfig:
    dir: Path
    target: str | None = None
    keep_days: int | None = None
    keep_last: int | None = None
    interval_seconds: float = BACKUP_KEYS["interval"].default
    offsite_dir: Path | None = None
    s3: Mapping[str, Any] | None = None
    sanity_query: str | None = None


@dataclass(frozen=True)
class Config:
    listen: str
    targets: tuple[TargetSpec, ...]
    queries: tuple[QuerySpec, ...]
    collectors: tuple[str, ...]
    defaults: Defaults
    backup: BackupConfig | None
    source: str
    warnings: tuple[str, ...] = ()  # located, like errors: what `pgvigil check` prints as warnings

    def target(self, name: str) -> TargetSpec:
        for spec in self.targets:
            if spec.name == name:
                return spec
        raise KeyError(name)


# ---------------------------------------------------------------------------
# entry points

def load_config(path: str | os.PathLike | None, dsn: str | None = None) -> Config:
    """Read and validate a config file; without a path, the defaults plus --dsn/libpq env."""
    if path is None:
        return parse_config("{}", source="<defaults>", dsn=dsn)
    try:
        text = read_text(path, CONFIG_LIMIT, "config file")  # bad bytes: located by load_located
    except UnreadableFile as exc:
        raise ConfigError([str(exc)]) from None
    return parse_config(text, source=str(path), dsn=dsn)


def parse_config(text: str, source: str = "<string>", dsn: str | None = None) -> Config:
    try:
        doc = load_located(text, source)
    except YamlSyntaxError as exc:
        raise ConfigError([str(exc)]) from None
    checker = _Checker(doc)
    config = checker.config(dsn)
    if checker.errors:
        raise ConfigError(checker.located.in_file_order())
    return config


def available_packs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKS_DIR.glob("*.yaml"))}


def parse_size(value: Any) -> float | None:
    """'8GB', '500MiB', '1.5TB' or a number of bytes; None when invalid or not positive."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value > 0 else None
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        return None
    size = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "B").upper()]
    return size if size > 0 else None


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """Expand ${VAR} and ${VAR:-default}; returns the text and the names of unset variables."""
    env = os.environ if environ is None else environ
    missing: list[str] = []

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _ENV_REF.sub(substitute, value), missing


# ---------------------------------------------------------------------------
# validation: one table per section declares its keys; a new option is one Key here plus its field


@dataclass(frozen=True)
class _QueryRef:
    """What the cross-checks need of a query, kept even when the query itself has errors,
    so a duplicated name or a mistyped target is reported in the same pass as everything else."""

    where: tuple
    name: str
    targets: tuple[str, ...] | None
    kind: Any


class _Checker(Checker):
    """Walks one config document (and the packs it names), converting it and collecting located errors."""

    query_refs: list[_QueryRef]
    places: dict[int, tuple]  # id of a QuerySpec -> where its errors point (`queries[3]`, `pack tables.<name>`)
    warnings: LocatedErrors

    # -- sections ---------------------------------------------------------
    def config(self, dsn: str | None) -> Config:
        self.query_refs = []
        self.places = {}
        self.warnings = LocatedErrors(self.doc)
        top = self.mapping(self.doc.data, (), TOP_KEYS)
        listen = top.get("listen", TOP_KEYS["listen"].default)
        if self.typed(listen, ("listen",), "str") is not None and not _valid_listen(listen):
            self.error(("listen",), listen_problem(listen))
        defaults = self.defaults(top.get("defaults"))
        targets = self.targets(top.get("targets"), dsn)
        collectors = self.collectors(top.get("collectors", list(TOP_KEYS["collectors"].default)))
        queries = self.queries(top.get("queries"), defaults, self.doc, pack=None)
        for pack in collectors:
            queries += self.pack_queries(pack, defaults)
        backup = self.backup(top.get("backup")) if top.get("backup") is not None else None
        self.cross_check(queries, targets, backup)
        return Config(listen=listen if isinstance(listen, str) else DEFAULT_LISTEN, targets=targets,
                      queries=tuple(queries), collectors=collectors, defaults=defaults,
                      backup=backup, source=self.doc.source,
                      warnings=tuple(self.warnings.in_file_order()))

    def defaults(self, value: Any) -> Defaults:
        raw = self.mapping(value, ("defaults",), DEFAULT_KEYS)
        values = self.scalars(raw, ("defaults",), DEFAULT_KEYS)
        if "exclude_schemas" in raw:
            values["exclude_schemas"] = self.string_list(raw["exclude_schemas"], ("defaults", "exclude_schemas"))
        for key in ("max_series", "max_label_bytes", "max_query_bytes"):
            if values.get(key) == 0:
                self.error(("defaults", key), "expected at least 1")
                values.pop(key)
        # 0 would switch a limit off (statement_timeout 0 means none) or fail every scrape at once.
        for key in ("timeout", "lock_timeout", "connect_timeout", "scrape_timeout"):
            if values.get(key) == 0:
                self.error(("defaults", key), "expected a duration above zero, e.g. 5s")
                values.pop(key)
        return Defaults(**values)

    def targets(self, value: Any, dsn: str | None) -> tuple[TargetSpec, ...]:
        if value is None or value == {}:
            # No targets: one from --dsn, else libpq's PG* environment (an empty DSN).
            return (TargetSpec(name="default", dsn=dsn or ""),)
        raw = self.mapping(value, ("targets",), None)  # any name; checked below
        specs = []
        for name, body in raw.items():
            path = ("targets", name)
            if not isinstance(name, str) or not _LABEL_VALUE_SAFE.match(name):
                self.error(path, "expected a target name of letters, digits, '_', '-' or '.'")
                continue
            specs.append(self.target(name, body, path))
        return tuple(s for s in specs if s is not None)

    def target(self, name: str, body: Any, path: tuple) -> TargetSpec | None:
        if isinstance(body, str):
            body = {"dsn": body}
        raw = self.mapping(body, path, TARGET_KEYS)
        if not isinstance(body, dict):
            return None
        dsn = self.target_dsn(raw, path)
        labels = []
        for key, val in self.mapping(raw.get("labels"), path + ("labels",), None).items():
            lpath = path + ("labels", key)
            if not isinstance(key, str) or not _LABEL_NAME.match(key) or key.startswith("__"):
                self.error(lpath, "expected a label name matching [a-zA-Z_][a-zA-Z0-9_]*")
            elif key in RESERVED_LABELS:
                self.error(lpath, f"label {shown(key)} is set by pgvigil and cannot be overridden")
            elif isinstance(val, (str, int, float)) and not isinstance(val, bool):
                labels.append((key, str(val)))
            else:
                self.error(lpath, f"expected a string label value, got {describe_value(val)}")
        pool = self.scalars(raw, path, TARGET_KEYS).get("pool_size", TARGET_KEYS["pool_size"].default)
        if not 1 <= pool <= 64:
            self.error(path + ("pool_size",), "expected a pool size between 1 and 64")
            pool = 1
        allocation = None
        if raw.get("storage_allocation") is not None:
            allocation = parse_size(raw["storage_allocation"])
            if allocation is None:
                self.error(path + ("storage_allocation",),
                           "expected a size such as 8GB, 500MiB or a number of bytes, "
                           f"got {describe_value(raw['storage_allocation'])}")
        kind = self.choice(raw.get("kind", TARGET_KEYS["kind"].default), path + ("kind",), KINDS) or "postgres"
        if kind == "pgbouncer" and "databases" in raw:
            self.error(path + ("databases",),
                       "a pgbouncer target is one admin console: it has no databases to discover")
        log_spec = None
        if raw.get("log") is not None:
            if kind == "pgbouncer":
                self.error(path + ("log",), "a pgbouncer target has no PostgreSQL server log to read")
            else:
                log_spec = check_log(self, raw["log"], path + ("log",), parse_size)
        return TargetSpec(name=name, dsn=dsn or "", labels=tuple(labels), pool_size=pool, kind=kind,
                          storage_allocation_bytes=allocation, log=log_spec, **self.discovery(raw, path, labels),
                          **self.sampling(raw, path))

    def sampling(self, raw: dict, path: tuple) -> dict[str, Any]:
        """The sampler's keys of a target (sample_interval, sample_top): exporter/scrape/sampler.py."""
        found: dict[str, Any] = {}
        if "sample_interval" in raw:
            value = raw["sample_interval"]
            seconds = 0.0 if value in ("off", False) else parse_duration(value)
            if seconds is None or 0 < seconds < MIN_SAMPLE_INTERVAL or seconds > MAX_SAMPLE_INTERVAL:
                self.error(path + ("sample_interval",), "expected a duration from 100ms to 1h such as 1s, "
                                                        f"or 0 or off to sample nothing, got {describe_value(value)}")
            else:
                found["sample_interval"] = seconds
        top = self.typed(raw["sample_top"], path + ("sample_top",), "int") if "sample_top" in raw else None
        if top is not None:
            if 1 <= top <= 1000:
                found["sample_top"] = top
            else:
                self.error(path + ("sample_top",), "expected a number of label sets between 1 and 1000")
        return found

    def discovery(self, raw: dict, path: tuple, labels: list[tuple[str, str]]) -> dict[str, Any]:
        """The discovery keys of a target (databases, exclude_databases, connection_budget, discovery_interval)."""
        found: dict[str, Any] = {}
        if "databases" in raw:
            value = raw["databases"]
            if value == "all":
                found["databases"] = ("*",)
            elif isinstance(value, list):
                found["databases"] = self.string_list(value, path + ("databases",))
            else:
                self.error(path + ("databases",), "expected 'all' or a list of database names or patterns, "
                                                  f"got {describe_value(value)}")
        if "exclude_databases" in raw:
            found["exclude_databases"] = self.string_list(raw["exclude_databases"], path + ("exclude_databases",))
        values = self.scalars(raw, path, TARGET_KEYS)
        for key in ("connection_budget", "discovery_interval"):
            if key in values:
                found[key] = values[key]
        if not 1 <= found.get("connection_budget", 1) <= 64:
            self.error(path + ("connection_budget",), "expected a connection budget between 1 and 64")
            found.pop("connection_budget")
        if found.get("discovery_interval") == 0:
            self.error(path + ("discovery_interval",), "expected a duration above 0, such as 60s")
            found.pop("discovery_interval")
        if found.get("databases") and any(key == "datname" for key, _ in labels):
            self.error(path + ("labels", "datname"), "label 'datname' is set by pgvigil on discovered databases")
        return found

    def target_dsn(self, raw: dict, path: tuple) -> str | None:
        if "dsn" in raw and "dsn_file" in raw:
            self.error(path, "set either 'dsn' or 'dsn_file', not both")
            return None
        if "dsn_file" in raw:
            file_name = self.typed(raw["dsn_file"], path + ("dsn_file",), "str")
            if file_name is None:
                return None
            named = shown(file_name, quoted=False)
            try:
                text = read_limited(os.path.expanduser(file_name), SECRET_LIMIT, "DSN file").decode("utf-8").strip()
            except UnreadableFile as exc:
                self.error(path + ("dsn_file",), f"cannot read DSN file {named}: {exc.reason}")
                return None
            except UnicodeDecodeError as exc:
                self.error(path + ("dsn_file",), f"cannot read DSN file {named}: not UTF-8 text (byte {exc.start})")
                return None
            if "\0" in text:  # libpq cannot take it: the connection would fail with a traceback
                self.error(path + ("dsn_file",), f"cannot read DSN file {named}: it holds a NUL byte")
                return None
            return text
        dsn = self.typed(raw.get("dsn", ""), path + ("dsn",), "str")
        if dsn is None:
            return None
        expanded, missing = expand_env(dsn)
        for var in missing:
            self.error(path + ("dsn",),
                       f"environment variable {var} is not set (use ${{{var}:-default}} for a fallback)")
        return expanded

    def collectors(self, value: Any) -> tuple[str, ...]:
        names = self.string_list(value, ("collectors",))
        packs = available_packs()
        chosen: list[str] = []
        for i, name in enumerate(names):
            if name == "default":
                chosen += [p for p in packs if _pack_is_default(packs[p])]
            elif name in packs:
                chosen.append(name)
            else:
                hint = did_you_mean(name, [*packs, "default"])
                known = ", ".join(["default", *packs]) or "default"
                self.error(("collectors", i), f"unknown query pack {shown(name)}" +
                           (f"; did you mean {shown(hint)}?" if hint else f"; expected one of: {known}"))
        return tuple(dict.fromkeys(chosen))

    def pack_queries(self, pack: str, defaults: Defaults) -> list[QuerySpec]:
        path = available_packs()[pack]
        try:
            doc = load_located(read_text(path, CONFIG_LIMIT, "query pack"), str(path))
        except (YamlSyntaxError, UnreadableFile) as exc:
            self.errors.append(str(exc))
            return []
        raw = self.mapping(doc.data, (), PACK_KEYS, doc)
        return self.queries(raw.get("queries"), defaults, doc, pack=pack)

    def queries(self, value: Any, defaults: Defaults, doc: LocatedData, pack: str | None) -> list[QuerySpec]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(("queries",), f"expected a list of queries, got {describe_value(value)}", doc)
            return []
        specs = [self.query(item, ("queries", i), defaults, doc, pack) for i, item in enumerate(value)]
        return [s for s in specs if s is not None]

    def query(self, body: Any, path: tuple, defaults: Defaults, doc: LocatedData, pack: str | None) -> QuerySpec | None:
        raw = self.mapping(body, path, QUERY_KEYS, doc)
        if not isinstance(body, dict):
            return None
        before = len(self.errors)
        self.missing(raw, path, QUERY_KEYS, doc)
        values = self.scalars(raw, path, QUERY_KEYS, doc)
        name = values.get("name", "")
        if name and not _METRIC_NAME.match(name):
            self.error(path + ("name",),
                       f"expected a name matching [a-zA-Z_:][a-zA-Z0-9_:]*, got {describe_value(name)}", doc)
        if isinstance(values.get("sql"), str):
            values["sql"] = values["sql"].replace(EXCLUDED_SCHEMAS_PLACEHOLDER, schema_array(defaults.exclude_schemas))
        sql = values.get("sql", "")
        labels = self.string_list(raw.get("labels", []), path + ("labels",), doc)
        for i, label in enumerate(labels):
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                self.error(path + ("labels", i), f"{shown(label)} is not a valid label name", doc)
            elif label in RESERVED_LABELS:
                self.error(path + ("labels", i), f"label {shown(label)} is set by pgvigil; rename the column", doc)
            elif label in labels[:i]:
                self.error(path + ("labels", i), f"label {shown(label)} is listed twice", doc)
        help_text = values.get("help", name)
        before_metrics = len(self.errors)
        metrics = self.metrics(raw.get("metrics"), path + ("metrics",), name, help_text, doc)
        metrics_whole = len(self.errors) == before_metrics  # else what follows from them would be a consequence
        scope = self.choice(raw.get("scope", QUERY_KEYS["scope"].default), path + ("scope",), SCOPES, doc)
        targets = self.string_list(raw["targets"], path + ("targets",), doc) if "targets" in raw else None
        self._check_query_shape(labels, metrics, sql, path, doc, metrics_whole)
        sql_labels = self.sql_labels(raw, labels, metrics, path, doc)
        top_changed = self.top_changed(raw, labels, metrics, path, doc) if "top_changed" in raw else None
        self._check_kind(raw, sql, path, doc)
        pick = self.pick(raw, sql, path, defaults, doc)
        if raw.get("kind", QUERY_KEYS["kind"].default) == "postgres" and isinstance(sql, str):
            self._check_sql(sql, path + ("sql",), doc, raw)
            self._check_allow_calls(raw, (sql,) if pick is None else (sql, pick.sql), path, doc)
        self.query_refs.append(_QueryRef(path if pack is None else (f"pack {pack}", name), name, targets,
                                         raw.get("kind", QUERY_KEYS["kind"].default)))
        if len(self.errors) > before:
            return None
        options = {key.name: _option(key, values, defaults) for key in QUERY_KEYS.keys if key.kind is not None}
        spec = QuerySpec(**{**options, "help": help_text, "labels": labels, "metrics": metrics,
                            "targets": targets, "scope": scope, "pack": pack,
                            "top_changed": top_changed, "pick": pick, "sql_labels": sql_labels,
                            "origin": f"{doc.source}:{doc.line_of(path) or 1}"})
        self.places[id(spec)] = self.query_refs[-1].where
        return spec

    def top_changed(self, raw: dict, labels: tuple[str, ...], metrics: tuple[MetricSpec, ...], path: tuple,
                    doc: LocatedData) -> TopChanged | None:
        path = path + ("top_changed",)
        body = self.mapping(raw["top_changed"], path, ("by", "limit"), doc)
        if not isinstance(raw["top_changed"], dict):
            return None
        counters = [m.column for m in metrics if m.type is MetricType.COUNTER]
        by = self.typed(body.get("by"), path + ("by",), "str", doc)
        limit = self.typed(body.get("limit"), path + ("limit",), "int", doc)
        if by is not None and by not in counters:
            self.error(path + ("by",), f"expected one of the query's counter columns ({shown_list(counters)}), "
                                       f"got {shown(by)}", doc)
            by = None
        if limit == 0:
            self.error(path + ("limit",), "expected at least 1", doc)
            limit = None
        if not labels:
            self.error(path, "needs labels: the last one is set to 'other' on the remainder rows", doc)
        return TopChanged(by, limit) if by is not None and limit is not None and labels else None

    def sql_labels(self, raw: dict, labels: tuple[str, ...], metrics: tuple[MetricSpec, ...], path: tuple,
                   doc: LocatedData) -> tuple[str, ...]:
        """The labels whose SQL text is masked: some of the query's labels, on rows that are kept."""
        if "sql_labels" not in raw:
            return ()
        path = path + ("sql_labels",)
        names = self.string_list(raw["sql_labels"], path, doc)
        for i, name in enumerate(names):
            if name not in labels:
                self.error(path + (i,), f"{shown(name)} is not one of the query's labels ({shown_list(labels)})", doc)
        if any(m.type.is_histogram for m in metrics):
            self.error(path, "histogram rows are folded as they are fetched: their labels cannot hold SQL text", doc)
        return names

    def pick(self, raw: dict, sql: Any, path: tuple, defaults: Defaults, doc: LocatedData) -> Pick | None:
        """A query's `pick`, and `{{picked}}` used in its SQL exactly when it has one."""
        uses_picked = isinstance(sql, str) and PICKED_PLACEHOLDER in sql
        if "pick" not in raw:
            if uses_picked:
                self.error(path + ("sql",), f"{PICKED_PLACEHOLDER} stands for the ids a `pick:` chose; "
                                            "add `pick: {sql: ...}` or remove it", doc)
            return None
        sql_path, path = path + ("sql",), path + ("pick",)
        body = self.mapping(raw["pick"], path, PICK_KEYS, doc)
        if not isinstance(raw["pick"], dict) or not self.missing(body, path, PICK_KEYS, doc):
            return None
        values = self.scalars(body, path, PICK_KEYS, doc)
        every = values.get("every", PICK_KEYS["every"].default)
        if every == 0:
            self.error(path + ("every",), "expected a duration above zero, e.g. 5m", doc)
        if raw.get("kind", QUERY_KEYS["kind"].default) != "postgres":
            self.error(path, "a pgbouncer query sends a console command: it has nothing to pick from", doc)
        elif not uses_picked and isinstance(sql, str):
            self.error(sql_path, f"never uses {PICKED_PLACEHOLDER}, so what the pick chooses would not be read", doc)
        pick_sql = values.get("sql")
        if not isinstance(pick_sql, str):
            return None
        pick_sql = pick_sql.replace(EXCLUDED_SCHEMAS_PLACEHOLDER, schema_array(defaults.exclude_schemas))
        if PICKED_PLACEHOLDER in pick_sql or PREVIOUS_RUN_PLACEHOLDER in pick_sql:
            self.error(path + ("sql",), f"a pick's sql cannot use {PICKED_PLACEHOLDER} or {PREVIOUS_RUN_PLACEHOLDER}",
                       doc)
            return None
        self._check_sql(pick_sql, path + ("sql",), doc, raw)
        return Pick(pick_sql, every) if every else None

    def metrics(self, value: Any, path: tuple, query: str, query_help: str, doc: LocatedData) -> tuple[MetricSpec, ...]:
        if not isinstance(value, dict) or not value:
            self.error(path, "expected a mapping of column name to metric, with at least one metric, "
                             f"got {describe_value(value)}", doc)
            return ()
        specs = []
        for column, body in value.items():
            mpath = path + (column,)
            raw = self.mapping(body, mpath, METRIC_KEYS, doc)
            raw_type = raw.get("type", METRIC_KEYS["type"].default)
            if self.choice(raw_type, mpath + ("type",), METRIC_TYPES, doc) is None:
                continue
            mtype = MetricType(raw_type)
            name = raw.get("name", f"{query}_{column}")
            if not isinstance(name, str) or not _METRIC_NAME.match(name):
                self.error(mpath + ("name",),
                           f"expected a metric name matching [a-zA-Z_:][a-zA-Z0-9_:]*, got {describe_value(name)}", doc)
                continue
            help_text = raw.get("help", query_help)
            if not isinstance(help_text, str):
                self.error(mpath + ("help",), f"expected a string, got {describe_value(help_text)}", doc)
                continue
            default = self.typed(raw["default"], mpath + ("default",), "number", doc) if "default" in raw else None
            buckets = self.buckets(raw, mtype, mpath, doc)
            specs.append(MetricSpec(column=str(column), name=name, type=mtype, help=help_text,
                                    buckets=buckets, default=default))
        return tuple(specs)

    def buckets(self, raw: dict, mtype: MetricType, path: tuple, doc: LocatedData) -> tuple[float, ...]:
        if not mtype.is_histogram:
            if "buckets" in raw:
                self.error(path + ("buckets",), f"buckets apply to histograms, not to a {mtype}", doc)
            return ()
        value = raw.get("buckets")
        if not isinstance(value, list) or not value:
            self.error(path + ("buckets",), "expected a non-empty list of upper bounds, e.g. [0.1, 0.5, 1]", doc)
            return ()
        bounds = [self.typed(b, path + ("buckets", i), "number", doc) for i, b in enumerate(value)]
        if any(b is None for b in bounds):
            return ()
        if any(b >= c for b, c in zip(bounds, bounds[1:])):
            self.error(path + ("buckets",), "expected bucket bounds in strictly increasing order", doc)
            return ()
        return tuple(float(b) for b in bounds)

    def _check_query_shape(self, labels: tuple, metrics: tuple, sql: str, path: tuple, doc: LocatedData,
                           metrics_whole: bool = True) -> None:
        for metric in metrics:
            if metric.column in labels:
                self.error(path + ("metrics", metric.column),
                           f"column {shown(metric.column)} is both a label and a metric; use it as one or the other",
                           doc)
            if metric.type.is_histogram and "le" in labels:
                self.error(path + ("labels",), "label 'le' is reserved for histogram buckets", doc)
        if metrics_whole and PREVIOUS_RUN_PLACEHOLDER in sql and \
                not any(m.type is MetricType.HISTOGRAM for m in metrics):
            self.error(path + ("sql",), f"{PREVIOUS_RUN_PLACEHOLDER} only makes sense for histogram metrics", doc)

    def _check_sql(self, sql: str, path: tuple, doc: LocatedData, raw: dict) -> None:
        """PostgreSQL's grammar decides that the SQL is one read-only query that calls no function whose effect
        a read-only transaction does not stop (exporter/sqlshape.py), but those the query lists in
        `allow_calls`; each problem is one error, the query named in those about a call."""
        name = raw.get("name")
        query = f"query '{name}'" if isinstance(name, str) and _METRIC_NAME.match(name) else "the query"
        try:
            shape = sqlshape.inspect(_checkable_sql(sql))
        except sqlshape.NotAQuery as exc:
            for problem in exc.problems:
                self.error(path, f"{query} {problem}" if problem.startswith("calls ") else problem, doc)
            return
        allowed = raw.get("allow_calls")
        allowed = {f.lower() for f in allowed if isinstance(f, str)} if isinstance(allowed, list) else set()
        for function in shape.side_effect_calls:
            if function not in allowed:
                self.error(path, f"{query} calls {function}(): {sqlshape.OPT_IN[function]}; if that is intended, "
                                 f"add `allow_calls: [{function}]` to the query", doc)

    def _check_allow_calls(self, raw: dict, sqls: tuple[str, ...], path: tuple, doc: LocatedData) -> None:
        """`allow_calls` names functions that allow an opt-in; one the SQL does not call is a warning."""
        if "allow_calls" not in raw:
            return
        path = path + ("allow_calls",)
        called: set[str] = set()
        for sql in sqls:
            try:
                called.update(sqlshape.inspect(_checkable_sql(sql)).side_effect_calls)
            except sqlshape.NotAQuery:
                return  # already an error
        for i, function in enumerate(self.string_list(raw["allow_calls"], path, doc)):
            why = sqlshape.refusal(function)
            if why is not None:
                self.error(path + (i,), f"{shown(function.lower(), quoted=False)}() cannot be allowed: {why}", doc)
            elif function.lower() not in sqlshape.OPT_IN:
                self.error(path + (i,), f"expected one of {', '.join(sqlshape.OPT_IN)} (the calls a query may "
                                        f"allow), got {describe_value(function)}", doc)
            elif function.lower() not in called:
                self.warnings.add(path + (i,), f"the query does not call {function.lower()}()", doc)

    def _check_kind(self, raw: dict, sql: str, path: tuple, doc: LocatedData) -> None:
        """A pgbouncer query sends one of the console's allowed SHOW commands, nothing else."""
        kind = self.choice(raw.get("kind", QUERY_KEYS["kind"].default), path + ("kind",), KINDS, doc)
        if kind == "pgbouncer" and " ".join(sql.replace(";", " ").split()).upper() not in CONSOLE_COMMANDS:
            self.error(path + ("sql",), "a pgbouncer query sends one of the console's commands: "
                                        f"{', '.join(CONSOLE_COMMANDS)}", doc)

    def backup(self, value: Any) -> BackupConfig | None:
        raw = self.mapping(value, ("backup",), BACKUP_KEYS)
        if not isinstance(value, dict) or not self.missing(raw, ("backup",), BACKUP_KEYS):
            return None
        fields = self.scalars(raw, ("backup",), BACKUP_KEYS)
        s3 = raw.get("s3")
        if s3 is not None and not isinstance(s3, dict):
            self.error(("backup", "s3"),
                       f"expected a mapping (bucket, prefix, endpoint_url, ...), got {describe_value(s3)}")
            s3 = None
        if "dir" not in fields:
            return None
        return BackupConfig(
            dir=Path(os.path.expanduser(fields["dir"])), target=fields.get("target"),
            keep_days=fields.get("keep_days"), keep_last=fields.get("keep_last"),
            interval_seconds=fields.get("interval") or BACKUP_KEYS["interval"].default,
            offsite_dir=Path(fields["offsite_dir"]) if fields.get("offsite_dir") else None,
            s3=s3, sanity_query=fields.get("sanity_query"),
        )

    def cross_check(self, queries: list[QuerySpec], targets: tuple[TargetSpec, ...],
                    backup: BackupConfig | None) -> None:
        self.check_query_refs(targets)
        families: dict[str, tuple[QuerySpec, MetricSpec]] = {}
        samples: dict[str, tuple[QuerySpec, MetricSpec]] = {}  # every sample name a family writes
        for query in queries:
            where = self.where(query)
            for metric in query.metrics:
                self.check_family(query, metric, where, families, samples)
            for target in targets:
                clash = set(dict(target.labels)) & set(query.labels)
                if clash:
                    self.error(where + ("labels",), f"label(s) {shown_list(sorted(clash))} clash with "
                                                    f"constant labels of target {shown(target.name)}")
        if backup:
            self.check_backup_target(backup.target, targets)

    def check_backup_target(self, name: str | None, targets: tuple[TargetSpec, ...]) -> None:
        """The target backups dump (named, or the only one) exists and is a PostgreSQL server."""
        by_name = {t.name: t for t in targets}
        if name and name not in by_name:
            self.error(("backup", "target"), f"unknown target {shown(name)}")
            return
        chosen = by_name[name] if name else (targets[0] if len(targets) == 1 else None)
        if chosen is not None and chosen.kind != "postgres":
            self.error(("backup", "target") if name else ("backup",),
                       f"target {shown(chosen.name)} is a {chosen.kind} admin console, which pg_dump cannot "
                       "dump; set backup.target to a postgres target")

    def where(self, query: QuerySpec) -> tuple:
        return self.places.get(id(query), ("queries",))

    def check_query_refs(self, targets: tuple[TargetSpec, ...]) -> None:
        """Query names are unique and the targets a query names exist, for every query, even one with errors."""
        names = {t.name for t in targets}
        kinds = {t.name: t.kind for t in targets}
        seen: set[str] = set()
        for ref in self.query_refs:
            if ref.name and ref.name in seen:
                self.error(ref.where, f"query name {shown(ref.name)} is used twice")
            seen.add(ref.name)
            for wanted in ref.targets or ():
                if wanted not in names:
                    self.error(ref.where + ("targets",),
                               f"unknown target {shown(wanted)}; configured: {', '.join(sorted(names))}")
                elif kinds[wanted] != ref.kind:
                    self.error(ref.where + ("targets",), f"target {shown(wanted)} is a {kinds[wanted]} target; "
                                                         f"this query runs on {ref.kind} targets (its `kind`)")

    def check_family(self, query: QuerySpec, metric: MetricSpec, where: tuple,
                     families: dict[str, tuple[QuerySpec, MetricSpec]],
                     samples: dict[str, tuple[QuerySpec, MetricSpec]]) -> None:
        """A metric's name (and its samples' names) is pgvigil's own or another family's: Prometheus would
        drop the whole scrape. The same family in two queries is fine when their server versions never overlap."""
        path = where + ("metrics", metric.column)
        own = _sample_names(metric)
        reserved = [n for n in own if n in RESERVED_METRIC_NAMES or n.startswith(RESERVED_METRIC_PREFIXES)]
        if reserved:
            self.error(path, f"metric {shown(metric.name)} writes {shown(reserved[0])}, a name pgvigil itself exports "
                             f"({', '.join(RESERVED_METRIC_NAMES)}, {'*, '.join(RESERVED_METRIC_PREFIXES)}*)")
            return
        other = families.get(metric.name)
        if other and _versions_overlap(other[0], query):
            self.error(path, f"metric {shown(metric.name)} is also produced by query {shown(other[0].name)}")
        elif other and other[1].type != metric.type:
            self.error(path, f"metric {shown(metric.name)} has type {metric.type} here "
                             f"but {other[1].type} in query {shown(other[0].name)}")
        elif not other:
            clash = next((n for n in own if n in samples), None)
            if clash:
                writer = samples[clash]
                self.error(path, f"metric {shown(metric.name)} writes series {shown(clash)}, which {writer[1].type} "
                                 f"{shown(writer[1].name)} of query {shown(writer[0].name)} also writes")
        families.setdefault(metric.name, (query, metric))
        for name in own:
            samples.setdefault(name, (query, metric))


def _sample_names(metric: MetricSpec) -> tuple[str, ...]:
    """The sample names a family writes: a histogram X writes X_bucket, X_count and X_sum."""
    suffixes = {MetricType.HISTOGRAM: ("_bucket", "_count", "_sum"),
                MetricType.GAUGE_HISTOGRAM: ("_bucket", "_gcount", "_gsum")}.get(metric.type, ("",))
    return tuple(metric.name + suffix for suffix in suffixes)


_LABEL_VALUE_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+\Z")


def _option(key: Key, values: dict[str, Any], defaults: Defaults) -> Any:
    """A query option's value: as written, else its declared default or the one from `defaults:`."""
    value = values.get(key.name)
    if isinstance(key.default, _FromDefaults):
        inherit = value is None or (key.default.zero_too and value == 0)
        return getattr(defaults, key.name) if inherit else value
    return key.default if value is None else value


def schema_array(schemas: tuple[str, ...]) -> str:
    """A text[] literal of schema names (what `{{excluded_schemas}}` becomes)."""
    quoted = ", ".join("'" + name.replace("'", "''") + "'" for name in schemas)
    return f"ARRAY[{quoted}]::text[]"


def parse_listen(listen: str) -> tuple[str, int] | None:
    """`host:port` (`[::1]:9187` for IPv6) as (host, port); None when it is not one.

    ASCII digits only: str.isdigit() accepts '²', which int() then rejects."""
    host, sep, port = listen.rpartition(":")
    if not listen.isprintable():  # a NUL or a newline: no host name has one, and bind() raises on a NUL
        return None
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def listen_problem(listen: str) -> str:
    """What is wrong with a `listen` that parse_listen refused, for `listen:` and `--listen` alike."""
    control = next((c for c in listen if not c.isprintable()), None)
    held = f" (it holds the control character {control!r})" if control is not None else ""
    return f"{LISTEN_EXPECTED}, got {describe_value(listen)}{held}"


def _valid_listen(listen: str) -> bool:
    return parse_listen(listen) is not None


def _versions_overlap(a: QuerySpec, b: QuerySpec) -> bool:
    low = max(a.min_server_version or 0, b.min_server_version or 0)
    high = min(a.max_server_version or 10**9, b.max_server_version or 10**9)
    return low <= high


def _pack_is_default(path: Path) -> bool:
    try:
        doc = load_located(read_text(path, CONFIG_LIMIT, "query pack"), str(path))
    except (UnreadableFile, YamlSyntaxError):
        return True  # let the pack's own parse report the error
    return not isinstance(doc.data, dict) or doc.data.get("default", PACK_KEYS["default"].default) is not False
