"""Log lines: a name from outside (a database's, a target's) cannot start a line of its own."""
from __future__ import annotations

import pytest

from exporter.logs import loggable


@pytest.mark.parametrize("name, written", [
    ("app", "app"),
    ("tenant é 名前", "tenant é 名前"),  # printable text stays as it is
    ("x\n2031-01-01 ERROR exporter: forged", "x\\n2031-01-01 ERROR exporter: forged"),
    ("a\rb\tc", "a\\rb\\tc"),
    ("\x1b[2J", "\\x1b[2J"),  # a terminal escape
    ("a\x85b\u2028c\u2029d", "a\\x85b\\u2028c\\u2029d"),  # NEL and the Unicode line/paragraph separators
    ("a\u202eb", "a\\u202eb"),  # a bidi override: the line would read backwards
    ("back\\slash", "back\\\\slash"),  # the escape character itself, so escapes are unambiguous
    (b"bad\xff\xfe".decode("utf-8", "surrogateescape"), "bad\\xff\\xfe"),  # bytes that were not UTF-8
])
def test_names_are_written_on_one_line_with_their_controls_escaped(name, written):
    assert loggable(name) == written
    assert loggable(name).isprintable()
