"""YAML config -> frozen dataclasses, with every error located by file, line and key.

Validation runs in two passes: shape and types first, then cross-references
(targets a query names exist, a metric column is not also a label, buckets are
sorted, metric names do not clash). All errors are collected and reported at
once; nothing downstream re-validates.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

from exporter.yamlsource import LocatedData, LocatedErrors, YamlSyntaxError, describe_value, load_located

PACKS_DIR = Path(__file__).parent / "packs"
DEFAULT_LISTEN = "127.0.0.1:9187"
SCOPES = ("database", "cluster")
PREVIOUS_RUN_PLACEHOLDER = "{{previous_run}}"
RESERVED_LABELS = ("target",)

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"B": 1, **{f"{p}B": 1000 ** (i + 1) for i, p in enumerate("KMGTP")},
               **{f"{p}IB": 1024 ** (i + 1) for i, p in enumerate("KMGTP")}}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MAX_DURATION_SECONDS = 10 * 365 * 86400.0


class MetricType(str, Enum):
    """How a metric column is exposed; a str, so `m.type == "gauge"` and dict lookups by name still work."""

    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE_HISTOGRAM = "gauge_histogram"  # one observation per row, a fresh snapshot each run

    def __str__(self) -> str:
        # Python 3.11 formats a str-mixin Enum as 'MetricType.GAUGE' in f-strings; exposition needs the value.
        return self.value

    __format__ = str.__format__

    @property
    def is_histogram(self) -> bool:
        return self in (MetricType.HISTOGRAM, MetricType.GAUGE_HISTOGRAM)


METRIC_TYPES = tuple(t.value for t in MetricType)


class ConfigError(Exception):
    """Invalid configuration; `.errors` lists every problem as `file:line: key: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class TargetSpec:
    name: str
    dsn: str = field(repr=False)  # may hold a password: never log or render it
    labels: tuple[tuple[str, str], ...] = ()
    pool_size: int = 1
    storage_allocation_bytes: float | None = None  # the disk or plan limit, for storage utilization alerts


@dataclass(frozen=True)
class MetricSpec:
    column: str
    name: str
    type: MetricType
    help: str
    buckets: tuple[float, ...] = ()
    default: float | None = None


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
    pack: str | None = None

    @property
    def uses_previous_run(self) -> bool:
        return PREVIOUS_RUN_PLACEHOLDER in self.sql

    def runs_on_version(self, server_version: int) -> bool:
        if self.min_server_version is not None and server_version < self.min_server_version:
            return False
        if self.max_server_version is not None and server_version > self.max_server_version:
            return False
        return True


@dataclass(frozen=True)
class Defaults:
    timeout: float = 5.0
    lock_timeout: float = 1.0
    connect_timeout: float = 5.0
    ttl: float = 0.0
    max_series: int = 10000
    scrape_timeout: float = 10.0


@dataclass(frozen=True)
class BackupConfig:
    dir: Path
    target: str | None = None
    keep_days: int | None = None
    keep_last: int | None = None
    interval_seconds: float = 86400.0
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
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror}"]) from None
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


def parse_duration(value: Any) -> float | None:
    """'5s', '250ms', '2m', '1h', '1d' or a number of seconds; None when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value) if math.isfinite(value) and value >= 0 else None
    elif isinstance(value, str) and _DURATION.match(value):
        match = _DURATION.match(value)
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        return None
    # Beyond this, timers overflow (threading.TIMEOUT_MAX) at run time instead of failing here.
    return seconds if seconds is not None and seconds <= MAX_DURATION_SECONDS else None


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
# validation

_TOP_KEYS = ("listen", "targets", "defaults", "collectors", "queries", "backup")
_TARGET_KEYS = ("dsn", "dsn_file", "labels", "pool_size", "storage_allocation")
_DEFAULT_KEYS = ("timeout", "lock_timeout", "connect_timeout", "ttl", "max_series", "scrape_timeout")
_QUERY_KEYS = ("name", "help", "sql", "labels", "metrics", "ttl", "timeout", "lock_timeout", "targets",
               "min_server_version", "max_server_version", "scope", "requires_extension", "max_series")
_METRIC_KEYS = ("type", "help", "buckets", "default", "name")
_BACKUP_KEYS = ("dir", "target", "keep_days", "keep_last", "interval", "offsite_dir", "s3", "sanity_query")
_PACK_KEYS = ("description", "default", "queries")


class _Checker:
    """Walks one YAML document, converting it and collecting located errors."""

    def __init__(self, doc: LocatedData) -> None:
        self.doc = doc
        self.located = LocatedErrors(doc)
        self.errors = self.located.messages
        self.error = self.located.add

    def mapping(self, value: Any, path: tuple, allowed: tuple[str, ...], doc: LocatedData | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {describe_value(value)}", doc)
            return {}
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; expected one of: {', '.join(allowed)}"
                self.error(path + (key,), f"unknown key '{key}'{suggestion}", doc)
        return value

    def typed(self, value: Any, path: tuple, kind: str, doc: LocatedData | None = None) -> Any:
        """Check scalar kinds: str, int (>= 0), number, bool, duration."""
        ok: Callable[[Any], bool] = {
            "str": lambda v: isinstance(v, str),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53,
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
            "bool": lambda v: isinstance(v, bool),
            "duration": lambda v: parse_duration(v) is not None,
        }[kind]
        if ok(value):
            return parse_duration(value) if kind == "duration" else value
        expected = {
            "str": "a string",
            "int": "a non-negative integer",
            "number": "a finite number",
            "bool": "true or false",
            "duration": "a duration such as 500ms, 5s, 2m or 1h",
        }[kind]
        self.error(path, f"expected {expected}, got {describe_value(value)}", doc)
        return None

    def string_list(self, value: Any, path: tuple, doc: LocatedData | None = None) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.error(path, f"expected a list of strings, got {describe_value(value)}", doc)
            return ()
        items = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                items.append(item)
            else:
                self.error(path + (i,), f"expected a string, got {describe_value(item)}", doc)
        return tuple(items)

    # -- sections ---------------------------------------------------------
    def config(self, dsn: str | None) -> Config:
        top = self.mapping(self.doc.data, (), _TOP_KEYS)
        listen = top.get("listen", DEFAULT_LISTEN)
        if self.typed(listen, ("listen",), "str") is not None and not _valid_listen(listen):
            self.error(("listen",), f"expected host:port such as 127.0.0.1:9187, got {describe_value(listen)}")
        defaults = self.defaults(top.get("defaults"))
        targets = self.targets(top.get("targets"), dsn)
        collectors = self.collectors(top.get("collectors", ["default"]))
        queries = self.queries(top.get("queries"), defaults, self.doc, pack=None)
        for pack in collectors:
            queries += self.pack_queries(pack, defaults)
        backup = self.backup(top.get("backup")) if top.get("backup") is not None else None
        self.cross_check(queries, targets, backup)
        return Config(listen=listen if isinstance(listen, str) else DEFAULT_LISTEN, targets=targets,
                      queries=tuple(queries), collectors=collectors, defaults=defaults,
                      backup=backup, source=self.doc.source)

    def defaults(self, value: Any) -> Defaults:
        raw = self.mapping(value, ("defaults",), _DEFAULT_KEYS)
        base = Defaults()
        values = {}
        for key in _DEFAULT_KEYS:
            if key in raw:
                kind = "int" if key == "max_series" else "duration"
                parsed = self.typed(raw[key], ("defaults", key), kind)
                if parsed is not None:
                    values[key] = parsed
        if values.get("max_series") == 0:
            self.error(("defaults", "max_series"), "expected at least 1")
            values.pop("max_series")
        return Defaults(**{**base.__dict__, **values})

    def targets(self, value: Any, dsn: str | None) -> tuple[TargetSpec, ...]:
        if value is None or value == {}:
            # No targets: one from --dsn, else libpq's PG* environment (an empty DSN).
            return (TargetSpec(name="default", dsn=dsn or ""),)
        raw = self.mapping(value, ("targets",), tuple(value) if isinstance(value, dict) else ())
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
        raw = self.mapping(body, path, _TARGET_KEYS)
        if not isinstance(body, dict):
            return None
        dsn = self.target_dsn(raw, path)
        labels = []
        for key, val in self.mapping(raw.get("labels"), path + ("labels",), tuple(raw.get("labels") or {})).items():
            lpath = path + ("labels", key)
            if not isinstance(key, str) or not _LABEL_NAME.match(key) or key.startswith("__"):
                self.error(lpath, "expected a label name matching [a-zA-Z_][a-zA-Z0-9_]*")
            elif key in RESERVED_LABELS:
                self.error(lpath, f"label '{key}' is set by pgvigil and cannot be overridden")
            elif isinstance(val, (str, int, float)) and not isinstance(val, bool):
                labels.append((key, str(val)))
            else:
                self.error(lpath, f"expected a string label value, got {describe_value(val)}")
        pool = self.typed(raw.get("pool_size", 1), path + ("pool_size",), "int")
        if pool is not None and not 1 <= pool <= 64:
            self.error(path + ("pool_size",), "expected a pool size between 1 and 64")
            pool = 1
        allocation = None
        if raw.get("storage_allocation") is not None:
            allocation = parse_size(raw["storage_allocation"])
            if allocation is None:
                self.error(path + ("storage_allocation",),
                           f"expected a size such as 8GB, 500MiB or a number of bytes, got {describe_value(raw['storage_allocation'])}")
        return TargetSpec(name=name, dsn=dsn or "", labels=tuple(labels), pool_size=pool or 1,
                          storage_allocation_bytes=allocation)

    def target_dsn(self, raw: dict, path: tuple) -> str | None:
        if "dsn" in raw and "dsn_file" in raw:
            self.error(path, "set either 'dsn' or 'dsn_file', not both")
            return None
        if "dsn_file" in raw:
            file_name = self.typed(raw["dsn_file"], path + ("dsn_file",), "str")
            if file_name is None:
                return None
            try:
                return Path(os.path.expanduser(file_name)).read_text(encoding="utf-8").strip()
            except OSError as exc:
                self.error(path + ("dsn_file",), f"cannot read DSN file {file_name}: {exc.strerror}")
                return None
            except (ValueError, UnicodeDecodeError):  # a NUL in the path, or a binary file
                self.error(path + ("dsn_file",), f"cannot read DSN file {file_name!r}: not a readable text file path")
                return None
        dsn = self.typed(raw.get("dsn", ""), path + ("dsn",), "str")
        if dsn is None:
            return None
        expanded, missing = expand_env(dsn)
        for var in missing:
            self.error(path + ("dsn",), f"environment variable {var} is not set (use ${{{var}:-default}} for a fallback)")
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
                hint = difflib.get_close_matches(name, list(packs) + ["default"], n=1)
                known = ", ".join(["default", *packs]) or "default"
                self.error(("collectors", i), f"unknown query pack '{name}'" +
                           (f"; did you mean '{hint[0]}'?" if hint else f"; expected one of: {known}"))
        return tuple(dict.fromkeys(chosen))

    def pack_queries(self, pack: str, defaults: Defaults) -> list[QuerySpec]:
        path = available_packs()[pack]
        try:
            doc = load_located(path.read_text(encoding="utf-8"), str(path))
        except YamlSyntaxError as exc:
            self.errors.append(str(exc))
            return []
        raw = self.mapping(doc.data, (), _PACK_KEYS, doc)
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
        raw = self.mapping(body, path, _QUERY_KEYS, doc)
        if not isinstance(body, dict):
            return None
        before = len(self.errors)
        for key in ("name", "sql", "metrics"):
            if key not in raw:
                self.error(path, f"missing required key '{key}'", doc)
        name = self.typed(raw.get("name", ""), path + ("name",), "str", doc)
        if name and not _METRIC_NAME.match(name):
            self.error(path + ("name",), "expected a name matching [a-zA-Z_:][a-zA-Z0-9_:]*", doc)
        sql = self.typed(raw.get("sql", ""), path + ("sql",), "str", doc)
        labels = self.string_list(raw.get("labels", []), path + ("labels",), doc)
        for i, label in enumerate(labels):
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                self.error(path + ("labels", i), f"'{label}' is not a valid label name", doc)
            elif label in RESERVED_LABELS:
                self.error(path + ("labels", i), f"label '{label}' is set by pgvigil; rename the column", doc)
        help_text = self.typed(raw.get("help", name or ""), path + ("help",), "str", doc)
        metrics = self.metrics(raw.get("metrics"), path + ("metrics",), name or "", help_text or "", doc)
        opt = {}
        for key, kind in (("ttl", "duration"), ("timeout", "duration"), ("lock_timeout", "duration"),
                          ("min_server_version", "int"), ("max_server_version", "int"), ("max_series", "int"),
                          ("requires_extension", "str")):
            if key in raw:
                opt[key] = self.typed(raw[key], path + (key,), kind, doc)
        scope = raw.get("scope", "database")
        if scope not in SCOPES:
            self.error(path + ("scope",), f"expected one of {', '.join(SCOPES)}, got {describe_value(scope)}", doc)
        targets = self.string_list(raw["targets"], path + ("targets",), doc) if "targets" in raw else None
        self._check_query_shape(labels, metrics, sql or "", path, doc)
        if len(self.errors) > before:
            return None
        return QuerySpec(
            name=name, help=help_text, sql=sql, labels=labels, metrics=metrics,
            ttl=opt.get("ttl", defaults.ttl), timeout=opt.get("timeout") or defaults.timeout,
            lock_timeout=opt.get("lock_timeout") or defaults.lock_timeout, targets=targets,
            min_server_version=opt.get("min_server_version"), max_server_version=opt.get("max_server_version"),
            scope=scope, requires_extension=opt.get("requires_extension"),
            max_series=opt.get("max_series") or defaults.max_series, pack=pack,
        )

    def metrics(self, value: Any, path: tuple, query: str, query_help: str, doc: LocatedData) -> tuple[MetricSpec, ...]:
        if not isinstance(value, dict) or not value:
            self.error(path, f"expected a mapping of column name to metric, got {describe_value(value)}", doc)
            return ()
        specs = []
        for column, body in value.items():
            mpath = path + (column,)
            raw = self.mapping(body, mpath, _METRIC_KEYS, doc)
            raw_type = raw.get("type", "gauge")
            if raw_type not in METRIC_TYPES:
                hint = difflib.get_close_matches(str(raw_type), METRIC_TYPES, n=1)
                self.error(mpath + ("type",), f"expected one of {', '.join(METRIC_TYPES)}, got {describe_value(raw_type)}"
                           + (f"; did you mean '{hint[0]}'?" if hint else ""), doc)
                continue
            mtype = MetricType(raw_type)
            name = raw.get("name", f"{query}_{column}")
            if not isinstance(name, str) or not _METRIC_NAME.match(name):
                self.error(mpath + ("name",), f"expected a metric name matching [a-zA-Z_:][a-zA-Z0-9_:]*, got {describe_value(name)}", doc)
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

    def _check_query_shape(self, labels: tuple, metrics: tuple, sql: str, path: tuple, doc: LocatedData) -> None:
        for metric in metrics:
            if metric.column in labels:
                self.error(path + ("metrics", metric.column),
                           f"column '{metric.column}' is both a label and a metric; use it as one or the other", doc)
            if metric.type.is_histogram and "le" in labels:
                self.error(path + ("labels",), "label 'le' is reserved for histogram buckets", doc)
        if PREVIOUS_RUN_PLACEHOLDER in sql and not any(m.type is MetricType.HISTOGRAM for m in metrics):
            self.error(path + ("sql",), f"{PREVIOUS_RUN_PLACEHOLDER} only makes sense for histogram metrics", doc)

    def backup(self, value: Any) -> BackupConfig | None:
        raw = self.mapping(value, ("backup",), _BACKUP_KEYS)
        if not isinstance(value, dict):
            return None
        if "dir" not in raw:
            self.error(("backup",), "missing required key 'dir'")
            return None
        fields: dict[str, Any] = {}
        for key, kind in (("dir", "str"), ("target", "str"), ("keep_days", "int"), ("keep_last", "int"),
                          ("offsite_dir", "str"), ("sanity_query", "str"), ("interval", "duration")):
            if key in raw:
                fields[key] = self.typed(raw[key], ("backup", key), kind)
        s3 = raw.get("s3")
        if s3 is not None and not isinstance(s3, dict):
            self.error(("backup", "s3"), f"expected a mapping (bucket, prefix, endpoint_url, ...), got {describe_value(s3)}")
            s3 = None
        if fields.get("dir") is None:
            return None
        return BackupConfig(
            dir=Path(os.path.expanduser(fields["dir"])), target=fields.get("target"),
            keep_days=fields.get("keep_days"), keep_last=fields.get("keep_last"),
            interval_seconds=fields.get("interval") or 86400.0,
            offsite_dir=Path(fields["offsite_dir"]) if fields.get("offsite_dir") else None,
            s3=s3, sanity_query=fields.get("sanity_query"),
        )

    def cross_check(self, queries: list[QuerySpec], targets: tuple[TargetSpec, ...], backup: BackupConfig | None) -> None:
        names = {t.name for t in targets}
        seen_queries: dict[str, QuerySpec] = {}
        families: dict[str, tuple[QuerySpec, MetricSpec]] = {}
        for index, query in enumerate(queries):
            where = ("queries", index) if query.pack is None else (f"pack {query.pack}", query.name)
            if query.name in seen_queries:
                self.error(where, f"query name '{query.name}' is used twice")
            seen_queries[query.name] = query
            for target in query.targets or ():
                if target not in names:
                    self.error(where + ("targets",), f"unknown target '{target}'; configured: {', '.join(sorted(names))}")
            for metric in query.metrics:
                other = families.get(metric.name)
                if other and _versions_overlap(other[0], query):
                    self.error(where + ("metrics", metric.column),
                               f"metric '{metric.name}' is also produced by query '{other[0].name}'")
                elif other and other[1].type != metric.type:
                    self.error(where + ("metrics", metric.column),
                               f"metric '{metric.name}' has type {metric.type} here but {other[1].type} in query '{other[0].name}'")
                families.setdefault(metric.name, (query, metric))
            for target in targets:
                clash = set(dict(target.labels)) & set(query.labels)
                if clash:
                    self.error(where + ("labels",), f"label(s) {', '.join(sorted(clash))} clash with constant labels of target '{target.name}'")
        if backup and backup.target and backup.target not in names:
            self.error(("backup", "target"), f"unknown target '{backup.target}'")


_LABEL_VALUE_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _valid_listen(listen: str) -> bool:
    host, sep, port = listen.rpartition(":")
    return bool(sep) and port.isdigit() and 0 <= int(port) <= 65535


def _versions_overlap(a: QuerySpec, b: QuerySpec) -> bool:
    low = max(a.min_server_version or 0, b.min_server_version or 0)
    high = min(a.max_server_version or 10**9, b.max_server_version or 10**9)
    return low <= high


def _pack_is_default(path: Path) -> bool:
    try:
        doc = load_located(path.read_text(encoding="utf-8"), str(path))
    except (OSError, YamlSyntaxError):
        return True  # let the pack's own parse report the error
    return not isinstance(doc.data, dict) or doc.data.get("default", True) is not False
