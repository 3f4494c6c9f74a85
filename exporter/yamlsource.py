"""YAML loading that remembers where every value came from.

Config errors must name the file and line of the offending key, so the
loader returns plain Python data plus a map from key path to line number.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple  # a key path such as ("queries", 3, "metrics", "count", "type")


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

    def line_of(self, path: Path_) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def load_located(text: str, source: str) -> LocatedData:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(source, line, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(source, 1, f"invalid YAML: {exc}") from None
    located = LocatedData(data=None, source=source)
    if node is None:
        located.data = {}
        located.lines[()] = 1
        return located
    try:
        located.data = _convert(node, (), located.lines)
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(source, node.start_mark.line + 1, f"invalid YAML: {exc}") from None
    return located


def _convert(node: yaml.Node, path: Path_, lines: dict) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            key = key if isinstance(key, (str, int, float, bool)) or key is None else str(key)
            child = path + (key,)
            lines[child] = key_node.start_mark.line + 1
            result[key] = _convert(value_node, child, lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (i,), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    return f"<{type(node).__name__}>"
