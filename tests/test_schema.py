"""The shared key tables and located-error checker used by the config, web config and thresholds files."""
from __future__ import annotations

import pytest

from exporter.schema import Checker, Key, Section
from exporter.yamlsource import load_located

SECTION = Section(
    "`thing`",
    Key("name", "text", required=True, doc="what it is called"),
    Key("every", "duration", 60.0, doc="how often"),
    Key("count", "int", doc="how many"),
    Key("extra", doc="checked by the caller"),
)


def check(text: str) -> tuple[dict, list[str]]:
    checker = Checker(load_located(text, "f.yaml"))
    raw = checker.mapping(checker.doc.data, (), SECTION)
    checker.missing(raw, (), SECTION)
    values = checker.scalars(raw, (), SECTION)
    return values, checker.located.in_file_order()


def test_declared_kinds_are_converted():
    assert check("name: a\nevery: 2m\ncount: 3\nextra: [1]\n") == ({"name": "a", "every": 120.0, "count": 3}, [])


def test_every_problem_is_reported_with_file_line_and_key():
    values, errors = check("every: soon\ncount: -1\nnmae: a\n")
    assert values == {}
    assert errors == [
        "f.yaml:1: (top level): missing required key 'name'",
        "f.yaml:1: every: expected a duration such as 500ms, 5s, 2m or 1h, got the string 'soon'",
        "f.yaml:2: count: expected a non-negative integer, got the number -1",
        "f.yaml:3: nmae: unknown key 'nmae'; did you mean 'name'?",
    ]


def test_an_unrelated_key_lists_the_allowed_ones():
    assert check("name: a\nzzz: 1\n")[1] == [
        "f.yaml:2: zzz: unknown key 'zzz'; expected one of: name, every, count, extra"]


@pytest.mark.parametrize("value, message", [
    ("gauge2", "f.yaml:1: t: expected one of gauge, counter, got the string 'gauge2'; did you mean 'gauge'?"),
    (7, "f.yaml:1: t: expected one of gauge, counter, got the number 7"),
])
def test_choices_suggest_the_closest(value, message):
    checker = Checker(load_located(f"t: {value}\n", "f.yaml"))
    assert checker.choice(checker.doc.data["t"], ("t",), ("gauge", "counter")) is None
    assert checker.errors == [message]


def test_markdown_lists_keys_in_declaration_order():
    assert SECTION.markdown() == "\n".join([
        "| key | meaning |",
        "|---|---|",
        "| `name` | required; what it is called |",
        "| `every` | how often |",
        "| `count` | how many |",
        "| `extra` | checked by the caller |",
    ])
    assert SECTION.required() == ("name",)
    assert SECTION["every"].default == 60.0 and "count" in SECTION and "nope" not in SECTION
