"""Key tables and the one located-error checker shared by every YAML file pgvigil reads.

A section of a file (the config's `queries[]` entries, the web config's `tls_server_config`,
one threshold...) is declared once as a `Section` of `Key`s: name, scalar kind, default and a
one-line description. Unknown keys ("did you mean"), scalar types, required keys and the README's
key lists all come from that declaration. Cross-field rules stay in the module that owns the file.

Why not jsonschema: its errors carry a JSON path but no line, its messages ("'x' is not of type
'integer'") are not the ones users see today, and it would become a runtime dependency for the
~60 lines below.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from exporter.files import CONFIG_LIMIT, UnreadableFile, read_text
from exporter.yamlsource import (
    LocatedData,
    LocatedErrors,
    YamlSyntaxError,
    describe_value,
    format_key_path,
    load_located,
    shown,
    shown_key,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MAX_DURATION_SECONDS = 10 * 365 * 86400.0


def parse_duration(value: Any) -> float | None:
    """'5s', '250ms', '2m', '1h', '1d' or a number of seconds; None when invalid."""
    if isinstance(value, bool):
        return None
    seconds: float | None = None
    if isinstance(value, (int, float)):
        seconds = float(value) if math.isfinite(value) and value >= 0 else None
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            return None
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    # Beyond this, timers overflow (threading.TIMEOUT_MAX) at run time instead of failing here.
    return seconds if seconds is not None and seconds <= MAX_DURATION_SECONDS else None


@dataclass(frozen=True)
class Kind:
    """A scalar kind: what is accepted, how the error names it, and how the value is converted."""

    accepts: Callable[[Any], bool]
    expected: str
    convert: Callable[[Any], Any] = lambda value: value


KINDS: dict[str, Kind] = {
    "str": Kind(lambda v: isinstance(v, str), "a string"),
    "text": Kind(lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "int": Kind(lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53,
                "a non-negative integer"),
    "number": Kind(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                   "a finite number"),
    "bool": Kind(lambda v: isinstance(v, bool), "true or false"),
    "duration": Kind(lambda v: parse_duration(v) is not None, "a duration such as 500ms, 5s, 2m or 1h",
                     parse_duration),
}


@dataclass(frozen=True)
class Key:
    """One declared key. `kind` None: the section's own code checks the value (lists, mappings...)."""

    name: str
    kind: str | None = None
    default: Any = None
    required: bool = False
    doc: str = ""


class Section:
    """The keys allowed in one mapping of a file, in documentation order."""

    def __init__(self, title: str, *keys: Key) -> None:
        self.title = title
        self.keys = keys
        self.names = tuple(key.name for key in keys)
        self._by_name = {key.name: key for key in keys}

    def __getitem__(self, name: str) -> Key:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def required(self) -> tuple[str, ...]:
        return tuple(key.name for key in self.keys if key.required)

    def markdown(self) -> str:
        """The README's key list for this section (a test keeps the README equal to it)."""
        rows = [f"| `{key.name}` | {'required; ' if key.required else ''}{key.doc} |" for key in self.keys]
        return "\n".join(["| key | meaning |", "|---|---|", *rows])


def did_you_mean(key: str, allowed: Iterable[str]) -> str | None:
    hint = difflib.get_close_matches(key, list(allowed), n=1)
    return hint[0] if hint else None


class Checker:
    """Walks a YAML document, converting values and collecting every error with its file, line and key."""

    def __init__(self, doc: LocatedData) -> None:
        self.doc = doc
        self.located = LocatedErrors(doc)
        self.errors = self.located.messages
        self.report_duplicates(doc)

    def report_duplicates(self, doc: LocatedData) -> None:
        for path, first, again in doc.duplicates:
            self.located.messages.append(f"{doc.source}:{again}: {format_key_path(path)}: "
                                         f"key given twice (first on line {first}); give it once")

    def error(self, path: tuple, message: str, doc: LocatedData | None = None) -> None:
        self.located.add(path, message, doc)

    def unknown_key(self, key: Any, allowed: tuple[str, ...]) -> str:
        """The message for a key not in the section; files with a published message format override it."""
        hint = did_you_mean(str(key), allowed)
        suggestion = f"did you mean {shown(hint)}?" if hint else f"expected one of: {', '.join(allowed)}"
        return f"unknown key '{shown_key(key)}'; {suggestion}"

    def mapping(self, value: Any, path: tuple, allowed: Section | tuple[str, ...] | None,
                doc: LocatedData | None = None) -> dict:
        """`value` as a dict ({} when absent or not a mapping); keys outside `allowed` are errors."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {describe_value(value)}", doc)
            return {}
        names = allowed.names if isinstance(allowed, Section) else allowed
        for key in value:
            if names is not None and key not in names:
                self.error(path + (key,), self.unknown_key(key, names), doc)
        return value

    def missing(self, raw: dict, path: tuple, section: Section, doc: LocatedData | None = None) -> bool:
        """Report each required key absent from `raw`; True when all are there."""
        absent = [name for name in section.required() if name not in raw]
        for name in absent:
            self.error(path, self.missing_key(name), doc)
        return not absent

    def missing_key(self, name: str) -> str:
        return f"missing required key '{name}'"

    def typed(self, value: Any, path: tuple, kind: str, doc: LocatedData | None = None) -> Any:
        """The converted value when it is of `kind`, else None and an error."""
        spec = KINDS[kind]
        if spec.accepts(value):
            return spec.convert(value)
        self.error(path, f"expected {spec.expected}, got {describe_value(value)}", doc)
        return None

    def scalars(self, raw: dict, path: tuple, section: Section, doc: LocatedData | None = None) -> dict[str, Any]:
        """Every present key of a declared kind, converted; a wrong value is reported and left out."""
        values = {}
        for key in section.keys:
            if key.kind is not None and key.name in raw:
                parsed = self.typed(raw[key.name], path + (key.name,), key.kind, doc)
                if parsed is not None:
                    values[key.name] = parsed
        return values

    def choice(self, value: Any, path: tuple, choices: Iterable[str] | Mapping[str, Any],
               doc: LocatedData | None = None) -> Any:
        """`value` when it is one of `choices`, else None and an error with a "did you mean"."""
        names = tuple(choices)
        if isinstance(value, str) and value in names:
            return value
        hint = did_you_mean(str(value), names)
        self.error(path, f"expected one of {', '.join(names)}, got {describe_value(value)}"
                   + (f"; did you mean {shown(hint)}?" if hint else ""), doc)
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


Entry = TypeVar("Entry")


class EntriesChecker(Checker, Generic[Entry]):
    """A Checker for a file that maps names to entries (thresholds, objectives)."""

    def entry(self, name: str, entry: Any) -> Entry | None:
        raise NotImplementedError

    def complete(self, names: list[str]) -> None:
        """Cross-checks once every entry is read (names the file must have ...), reported with the rest."""


def read_entries_file(path: Path, what: str, error: Callable[[list[str]], Exception]) -> str:
    """The text of a named-entries file; an unreadable one raises `error` naming it."""
    try:
        return read_text(path, CONFIG_LIMIT, f"{what} file")  # bad bytes: located by load_located
    except UnreadableFile as exc:
        raise error([str(exc)]) from None


def parse_entries(text: str, source: str, checker: Callable[[LocatedData], EntriesChecker[Entry]], expected: str,
                  error: Callable[[list[str]], Exception]) -> dict[str, Entry]:
    """Validate a YAML mapping of names to entries; every error is reported at once, in file order."""
    try:
        located = load_located(text, source)
    except YamlSyntaxError as exc:
        raise error([str(exc)]) from None
    check = checker(located)
    data = located.data
    if not isinstance(data, dict) or not data:
        check.error((), f"expected a mapping of {expected}")
        raise error(check.errors)
    entries: dict[str, Entry] = {}
    for name, value in data.items():
        entry = check.entry(str(name), value)
        if entry is not None:
            entries[str(name)] = entry
    check.complete([str(name) for name in data])
    if check.errors:
        raise error(check.located.in_file_order())
    return entries
