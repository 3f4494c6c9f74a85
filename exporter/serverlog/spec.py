"""A target's `log:` section: where its server log is read from, in which format, how fast."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.schema import Checker, Key, Section
from exporter.yamlsource import describe_value

SOURCES = ("file", "sql")
FORMATS = ("auto", "csvlog", "jsonlog", "stderr")
# 16 MiB per 15 s is about 1 MiB/s: a busy server logging every statement writes more, a normal one
# far less. Above it the backlog grows and is reported (pgvigil_log_backlog_bytes) instead of memory.
DEFAULT_BUDGET = 16 * 1024 * 1024
DEFAULT_INTERVAL = 15.0

LOG_KEYS = Section(
    "`targets.<name>.log`",
    Key("source", "str", required=True, doc="`file` (a log file or the `log_directory`, read beside the server) "
                                            "or `sql` (`pg_ls_logdir()` and `pg_read_binary_file()`), see "
                                            "[docs/logs.md](docs/logs.md)"),
    Key("path", "str", doc="with `source: file`: the log file, or the directory holding the log files"),
    Key("format", "str", "auto", doc="`auto` (from the server's `log_destination`), `csvlog`, `jsonlog` or "
                                    "`stderr` (its `log_line_prefix` is read from the server)"),
    Key("budget", doc="bytes read per interval at most, e.g. `16MiB` (the default); the rest waits, "
                      "counted in `pgvigil_log_backlog_bytes`"),
    Key("interval", "duration", DEFAULT_INTERVAL, doc="how often the log is read; default 15s"),
    Key("state_file", "str", doc="where the read positions are kept, so a restart resumes without counting "
                                 "a line twice; default: none (a restart begins at the end of the log)"),
    Key("client_network_label", "bool", False, doc="`true`: failed logins also by the client's network "
                                                   "(IPv4 /24, IPv6 /48), never the address"),
)


@dataclass(frozen=True)
class LogSpec:
    source: str
    path: Path | None = None
    format: str = "auto"
    budget: int = DEFAULT_BUDGET
    interval: float = DEFAULT_INTERVAL
    state_file: Path | None = None
    client_network_label: bool = False


def check_log(checker: Checker, value: Any, path: tuple,
              parse_size: Any) -> LogSpec | None:
    """The `log:` section of one target, every problem reported at its key; None when it has errors."""
    before = len(checker.errors)
    raw = checker.mapping(value, path, LOG_KEYS)
    if not raw:
        if isinstance(value, dict):
            checker.error(path, "missing required key 'source'")
        return None
    checker.missing(raw, path, LOG_KEYS)
    values = checker.scalars(raw, path, LOG_KEYS)
    source = checker.choice(raw["source"], path + ("source",), SOURCES) if "source" in raw else None
    fmt = checker.choice(raw.get("format", "auto"), path + ("format",), FORMATS) or "auto"
    if source == "file" and not values.get("path"):
        checker.error(path, "missing required key 'path': the log file or directory (with source: file)")
    if source == "sql" and "path" in raw:
        checker.error(path + ("path",), "source: sql reads the server's log_directory; path is for source: file")
    budget = DEFAULT_BUDGET
    if "budget" in raw:
        size = parse_size(raw["budget"])
        if size is None or size < 64 * 1024:
            checker.error(path + ("budget",), "expected a size of at least 64KiB such as 16MiB, "
                                              f"got {describe_value(raw['budget'])}")
        else:
            budget = int(size)
    interval = values.get("interval", DEFAULT_INTERVAL)
    if interval < 1:
        checker.error(path + ("interval",), "expected a duration of at least 1s")
    if len(checker.errors) > before or source is None:
        return None
    state_file = values.get("state_file")
    return LogSpec(source=source, path=Path(values["path"]) if values.get("path") else None, format=fmt,
                   budget=budget, interval=interval, state_file=Path(state_file) if state_file else None,
                   client_network_label=values.get("client_network_label", False))
