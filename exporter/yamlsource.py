"""YAML loading that remembers where every value came from.

Config errors must name the file and line of the offending key, so the
loader returns plain Python data plus a map from key path to line number.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from exporter.redaction import may_hold_secret, redact

Path_ = tuple  # a key path such as ("queries", 3, "metrics", "count", "type")
MAX_NODES = 1_000_000  # values in one document after alias expansion


class YamlSyntaxError(Exception):
    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source, self.line, self.message = source, line, message


@dataclass
class LocatedData:
    """Plain data from a YAML document and the 1-based line of each key path."""

    data: Any
    source: str
    lines: dict = field(default_factory=dict)
    # (key path, line of its first occurrence, line of the repeat): YAML would silently keep the last
    duplicates: list = field(default_factory=list)

    def line_of(self, path: Path_) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


NOT_SHOWN = "<not shown: it may hold a secret>"  # a value named in a message
NOT_SHOWN_VALUE = "a string that may hold a secret (not shown)"  # the same, as `describe_value` words a value
LONGEST_SHOWN = 40  # characters of a value a message quotes; a longer one is cut with "..."


def shown(value: Any, quoted: bool = True) -> str:
    """A value the user wrote, as every message quotes it: `'pg_locks'` (`pg_locks` unquoted), or `NOT_SHOWN`.

    The one rule for echoing a file's values: a string that may be or hold a secret (a DSN, a
    `password=`, a URI with a userinfo: `redaction.may_hold_secret`) is never echoed, whatever
    the key it was found under. Every message that names a value the user wrote goes through here
    (or `describe_value`, `shown_key`, `shown_list`, which do)."""
    if not isinstance(value, str):
        return describe_value(value)
    if may_hold_secret(value):
        return NOT_SHOWN
    if not quoted:  # a path or a name: whole, and quoted only when it holds a newline or another control character
        return value if value.isprintable() else repr(value)
    return repr(value if len(value) <= LONGEST_SHOWN else value[:LONGEST_SHOWN - 3] + "...")


def shown_list(values: Any, empty: str = "none") -> str:
    """Names the user wrote, listed in a message: `a, b`; each follows `shown`'s rule."""
    shown_values = (shown(value, quoted=False) if isinstance(value, str) else shown(value) for value in values)
    return ", ".join(shown_values) or empty


def describe_value(value: Any) -> str:
    """How an error message names a value the user wrote: 'the string 'x'', 'a list', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a huge number" if abs(value) >= 1e15 else f"the number {value!r}"  # nan reads as nan
    if isinstance(value, str):
        quoted = shown(value)
        return NOT_SHOWN_VALUE if quoted == NOT_SHOWN else f"the string {quoted}"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    return type(value).__name__


def shown_key(key: Any) -> Any:
    """A mapping key as key paths show it (unquoted): a key that may hold a secret is not echoed."""
    if isinstance(key, str) and may_hold_secret(key):
        return "<key not shown>"
    # a newline in a key ("a\n" from a quoted key) would split the one-line message
    return repr(key) if isinstance(key, str) and not key.isprintable() else key


def format_key_path(path: Path_) -> str:
    """`queries[3].metrics.count` for ("queries", 3, "metrics", "count")."""
    out = ""
    for part in path:
        part = shown_key(part)
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class LocatedErrors:
    """Collects `file:line: key.path: message` strings, so every problem is reported at once."""

    def __init__(self, doc: LocatedData) -> None:
        self.doc = doc
        self.messages: list[str] = []

    def add(self, path: Path_, message: str, doc: LocatedData | None = None) -> None:
        doc = doc or self.doc
        line = doc.line_of(path)
        where = f"{doc.source}:{line}" if line else doc.source
        # `redact`: the structural masks (`password=...`, a URI's userinfo) over the whole message, the last
        # line of defence behind `shown`, which keeps such values out of the message in the first place
        self.messages.append(redact(f"{where}: {format_key_path(path)}: {message}"))

    def in_file_order(self) -> list[str]:
        return sorted(self.messages, key=_position)


def _position(message: str) -> tuple[str, int]:
    source, _, rest = message.partition(":")
    line = rest.split(":", 1)[0]
    return (source, int(line) if line.isdigit() else 0)


def load_located(text: str, source: str) -> LocatedData:
    _reject_undecodable(text, source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(source, line, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(source, 1, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise YamlSyntaxError(source, 1, "invalid YAML: nested too deeply") from None
    located = LocatedData(data=None, source=source)
    if node is None:
        located.data = {}
        located.lines[()] = 1
        return located
    try:
        located.data = _convert(node, (), located.lines, [MAX_NODES], located.duplicates)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlSyntaxError(source, mark.line + 1 if mark else 1, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(source, node.start_mark.line + 1, f"invalid YAML: {exc}") from None
    except RecursionError:  # a recursive alias (&a [*a]) or absurd nesting
        raise YamlSyntaxError(source, node.start_mark.line + 1,
                              "invalid YAML: nested too deeply (or an alias refers to itself)") from None
    return located


def _reject_undecodable(text: str, source: str) -> None:
    """Files are read with errors="surrogateescape": a byte that is not UTF-8 arrives here as a lone
    surrogate, and is reported with its line instead of a UnicodeDecodeError traceback."""
    bad = _UNDECODED.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - text.rfind("\n", 0, bad.start())
        raise YamlSyntaxError(source, line, f"not UTF-8 text: byte 0x{ord(bad.group()) - 0xDC00:02x} at column "
                                            f"{column}; save the file as UTF-8")


_UNDECODED = re.compile("[\udc80-\udcff]")


def _convert(node: yaml.Node, path: Path_, lines: dict, budget: list[int], duplicates: list) -> Any:
    # Aliases are expanded, so a few lines can stand for billions of values ("billion laughs"):
    # `budget` counts the values built and stops the expansion long before memory runs out.
    budget[0] -= 1
    if budget[0] < 0:
        raise yaml.constructor.ConstructorError(
            None, None, f"more than {MAX_NODES} values once aliases are expanded", node.start_mark)
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            key = key if isinstance(key, (str, int, float, bool)) or key is None else str(key)
            child = path + (key,)
            if key in result:  # `dsn:` twice: YAML keeps the last silently; the checker reports it
                duplicates.append((child, lines[child], key_node.start_mark.line + 1))
            lines[child] = key_node.start_mark.line + 1
            result[key] = _convert(value_node, child, lines, budget, duplicates)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (i,), lines, budget, duplicates) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        try:
            return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
        except ValueError as exc:  # e.g. an integer past Python's 4300-digit conversion limit
            reason = str(exc).split(";")[0]
            raise yaml.constructor.ConstructorError(None, None, f"cannot read value: {reason}",
                                                    node.start_mark) from None
    return f"<{type(node).__name__}>"
