"""SQL text that may be shown: constants, comments and settings' values taken out by PostgreSQL's own scanner.

pg_stat_statements replaces the constants of the statements it normalizes with $1, $2, ...,
but not everywhere: it keeps comments (`/* api_key=... */`), and up to PostgreSQL 15 keeps
utility statements as they were typed (`ALTER ROLE app PASSWORD '...'`, `SET app.api_key = sk_live_...`).
A label holding such text (`sql_labels:` in a query) is rebuilt token by token from libpg_query's
scanner (through pglast): every constant (string, number, bit string, dollar-quoted body) becomes the
next free `$n`, comments are dropped, whitespace becomes one space. The value of a setting (`SET x = v`,
`SET x TO v`, `ALTER ROLE r SET x = v`, `ALTER SYSTEM ...`, a function's `SET x = v`) becomes `$n`
too, whatever it is written as: PostgreSQL takes a bare word, a quoted identifier or a number there as
the value. What is left is keywords, identifiers, operators and parameters: nothing a pattern had to
recognise as a secret.

PostgreSQL reads a text two ways: a client with `standard_conforming_strings` off (a session setting)
writes `'abc\\' Leak3dPart'` as one string, which the scanner, with the setting on (its default and
libpg_query's only mode), reads as a string, an identifier and the start of another. So the text is
scanned a second time as PostgreSQL would with the setting off (`quoted_spans`: only quotes, escapes,
comments and dollar quotes matter, the rest of the grammar is the same in both modes): when the two
readings disagree on where a string, a quoted identifier or a comment starts or ends, no text is
shown for the statement (`NOT_SHOWN`), and `dropped_texts()` counts it.

Text cut short (`left(query, N)` in SQL) may end inside a string or a comment; the scanner
stops there and so does the masked text, with `...` appended.
"""
from __future__ import annotations

import re
import threading
from typing import Any

from pglast.parser import ParseError, scan

CONSTANT_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
# Tokens whose extent depends on quoting: what the two readings of a text are compared on.
QUOTED_TOKENS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST", "UIDENT", *COMMENT_TOKENS})
CUT_MARK = "..."
NOT_SHOWN = "<text not shown: PostgreSQL can read its quotes two ways>"
# Statements in which `SET name = value` / `SET name TO value` sets a setting (UPDATE's SET is a column's).
SETTING_STATEMENTS = frozenset({"SET", "ALTER", "CREATE"})

_dropped = 0
_dropped_lock = threading.Lock()


def dropped_texts() -> int:
    """How many texts were not shown since the process started (`pgvigil_sql_texts_dropped_total`)."""
    return _dropped


def masked_sql(text: str) -> str:
    """`text` with its constants and settings' values replaced by `$n` and its comments dropped
    ('' when nothing scans, `NOT_SHOWN` when PostgreSQL could read its quotes two ways)."""
    cut: int | None = None
    try:
        tokens = scan(text)
    except ParseError as exc:
        cut = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        try:
            tokens = scan(text[:cut]) if cut > 0 else []
        except ParseError:
            return ""
    if _scanned_spans(text, tokens, cut) != quoted_spans(text, standard_conforming_strings=False):
        global _dropped
        with _dropped_lock:
            _dropped += 1
        return NOT_SHOWN
    rebuilt = _rebuilt(text, tokens)
    return rebuilt if cut is None else f"{rebuilt} {CUT_MARK}".lstrip()


def _scanned_spans(text: str, tokens: list, cut: int | None) -> list[tuple[int, int]]:
    """Where the scanner's strings, quoted identifiers and comments start and end (an unterminated one: to the end)."""
    spans = [(t.start, t.end + 1) for t in tokens
             if t.name in QUOTED_TOKENS or (t.name == "IDENT" and text[t.start] == '"')]
    return spans + [(cut, len(text))] if cut is not None else spans


def _rebuilt(text: str, tokens: list) -> str:
    params = [text[t.start + 1:t.end + 1] for t in tokens if t.name == "PARAM"]
    next_param = max((int(p) for p in params if p.isdigit()), default=0) + 1
    tokens = [t for t in tokens if t.name not in COMMENT_TOKENS]
    values = _setting_values(tokens)
    parts: list[str] = []
    previous_end = -1
    for k, token in enumerate(tokens):
        if k in values and k - 1 in values:
            previous_end = token.end  # one value written as several tokens (`a.b`, `-1`): one $n
            continue
        if parts and token.start > previous_end + 1:
            parts.append(" ")  # whitespace or a comment stood between the two tokens
        if token.name in CONSTANT_TOKENS or k in values:
            parts.append(f"${next_param}")
            next_param += 1
        else:
            parts.append(text[token.start:token.end + 1])
        previous_end = token.end
    return "".join(parts)


def _setting_values(tokens: list) -> set[int]:
    """The indexes of the tokens that are a setting's value: everything after `SET name TO` / `SET name =` up to
    the end of the statement, but the commas between a list's values (`SET search_path TO a, b`)."""
    values: set[int] = set()
    first: str | None = None  # the statement's first token
    state = "idle"  # -> "name" after SET (in a SET, ALTER or CREATE statement) -> "value" after TO or =
    named = False
    for k, token in enumerate(tokens):
        if token.name == "ASCII_59":  # ';' ends the statement
            first, state = None, "idle"
            continue
        first = first or token.name
        if state == "value":
            if token.name != "ASCII_44":
                values.add(k)
        elif token.name == "SET" and first in SETTING_STATEMENTS:
            state, named = "name", False
        elif state == "name" and token.name in ("TO", "ASCII_61") and named:
            state = "value"
        elif state == "name" and (token.name in ("IDENT", "UIDENT", "ASCII_46") or _is_keyword(token)):
            named = True  # a setting's name: words and dots (`SET LOCAL app.api_key`)
        else:
            state = "idle"
    return values


def _is_keyword(token: Any) -> bool:
    return str(token.kind) != "NO_KEYWORD"


# -- the second reading: quotes, escapes, comments and dollar quotes as PostgreSQL's scanner (scan.l) reads them

_SPACE = " \t\n\r\f\v"
# After a string's closing quote, whitespace holding a newline (comments allowed) and a quote continue it.
# Possessive (*+): a long run of spaces or dashes costs one pass, not a backtracking search.
_QUOTE_CONTINUES = re.compile(r"(?:[ \t\f\v]|--[^\n\r]*+)*+[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*+[\n\r])*+'")
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_PARAM = re.compile(r"\$[0-9]+")
_NEWLINE = re.compile(r"[\n\r]")


def _ident_start(char: str) -> bool:
    return char.isascii() and (char.isalpha() or char == "_") or not char.isascii()


def _ident_char(char: str) -> bool:
    return _ident_start(char) or char.isdigit() and char.isascii() or char == "$"


def quoted_spans(text: str, standard_conforming_strings: bool) -> list[tuple[int, int]]:
    """Where PostgreSQL's scanner finds strings, quoted identifiers and comments in `text`, as (start, end)
    offsets, with `standard_conforming_strings` on or off; an unterminated one runs to the end of the text.

    Off, a plain string ('...', N'...') reads a backslash as an escape, as E'...' always does; that is
    the only difference between the two modes (a U&'...' string is an error with the setting off)."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        start, end = i, None
        if char in _SPACE:
            i += 1
            continue
        if text.startswith("--", i):
            newline = _NEWLINE.search(text, i)
            end = newline.start() if newline else n
        elif text.startswith("/*", i):
            end = _comment_end(text, i)
        elif char == "'":
            end = _string_end(text, i, escapes=not standard_conforming_strings, doubled=True)
        elif char == '"':
            end = _identifier_end(text, i)
        elif char == "$":
            param = _PARAM.match(text, i)
            delimiter = None if param else _DOLLAR_QUOTE.match(text, i)
            if delimiter is None:
                i = param.end() if param else i + 1
                continue
            close = text.find(delimiter.group(), delimiter.end())
            end = close + len(delimiter.group()) if close >= 0 else None
        elif _ident_start(char):
            j = i + 1
            while j < n and _ident_char(text[j]):
                j += 1
            word, rest = text[i:j], text[j:j + 2]
            if word in ("e", "E") and rest.startswith("'"):
                end = _string_end(text, j, escapes=True, doubled=True)
            elif word in ("b", "B", "x", "X") and rest.startswith("'"):
                end = _string_end(text, j, escapes=False, doubled=False)
            elif word in ("n", "N") and rest.startswith("'"):  # a plain string after the NCHAR keyword
                start = j
                end = _string_end(text, j, escapes=not standard_conforming_strings, doubled=True)
            elif word in ("u", "U") and rest == "&'":
                end = _string_end(text, j + 1, escapes=False, doubled=True)
            elif word in ("u", "U") and rest == '&"':
                end = _identifier_end(text, j + 1)
            else:
                i = j
                continue
        else:
            i += 1
            continue
        if end is None:  # unterminated: the rest of the text
            spans.append((start, n))
            break
        spans.append((start, end))
        i = end
    return spans


def _string_end(text: str, quote: int, escapes: bool, doubled: bool) -> int | None:
    """The end of the string whose opening quote is at `quote`, continuation included (None: unterminated)."""
    j, n = quote + 1, len(text)
    while True:
        while j < n:
            char = text[j]
            if escapes and char == "\\":
                j += 2
            elif char == "'" and doubled and text.startswith("''", j):
                j += 2
            elif char == "'":
                break
            else:
                j += 1
        if j >= n:
            return None
        continued = _QUOTE_CONTINUES.match(text, j + 1)
        if continued is None:
            return j + 1
        j = continued.end()


def _identifier_end(text: str, quote: int) -> int | None:
    j = quote + 1
    while True:
        close = text.find('"', j)
        if close < 0:
            return None
        if not text.startswith('""', close):
            return close + 1
        j = close + 2


def _comment_end(text: str, start: int) -> int | None:
    """The end of the /* comment */ at `start`; comments nest."""
    depth, j, n = 0, start, len(text)
    while j < n:
        if text.startswith("/*", j):
            depth += 1
            j += 2
        elif text.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return None
