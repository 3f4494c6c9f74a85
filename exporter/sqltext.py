"""SQL text that may be shown: constants and comments taken out by PostgreSQL's own scanner.

pg_stat_statements replaces the constants of the statements it normalizes with $1, $2, ...,
but not everywhere: it keeps comments (`/* api_key=... */`), and up to PostgreSQL 15 keeps
utility statements as they were typed (`ALTER ROLE app PASSWORD '...'`). A label holding
such text (`sql_labels:` in a query) is rebuilt token by token from libpg_query's scanner
(through pglast): every constant (string, number, bit string, dollar-quoted body) becomes the
next free `$n`, comments are dropped, whitespace becomes one space. What is left is keywords,
identifiers, operators and parameters: nothing a pattern had to recognise as a secret.

Text cut short (`left(query, N)` in SQL) may end inside a string or a comment; the scanner
stops there and so does the masked text, with `...` appended.
"""
from __future__ import annotations

from pglast.parser import ParseError, scan

CONSTANT_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
CUT_MARK = "..."


def masked_sql(text: str) -> str:
    """`text` with its constants replaced by `$n` and its comments dropped ('' when nothing scans)."""
    try:
        return _rebuilt(text, scan(text))
    except ParseError as exc:
        stop = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        try:
            head = _rebuilt(text, scan(text[:stop])) if stop > 0 else ""
        except ParseError:
            return ""
        return f"{head} {CUT_MARK}".lstrip()


def _rebuilt(text: str, tokens: list) -> str:
    params = [text[t.start + 1:t.end + 1] for t in tokens if t.name == "PARAM"]
    next_param = max((int(p) for p in params if p.isdigit()), default=0) + 1
    parts: list[str] = []
    previous_end = -1
    for token in tokens:
        if token.name in COMMENT_TOKENS:
            continue
        if parts and token.start > previous_end + 1:
            parts.append(" ")  # whitespace or a comment stood between the two tokens
        if token.name in CONSTANT_TOKENS:
            parts.append(f"${next_param}")
            next_param += 1
        else:
            parts.append(text[token.start:token.end + 1])
        previous_end = token.end
    return "".join(parts)
