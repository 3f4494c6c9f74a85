"""Secrets out of text: DSN passwords and known secret strings never reach logs, metrics or errors.

Masking works from the structure of the DSN, not from patterns over messages: libpq's own parser
(`psycopg2.extensions.parse_dsn`) says what the password is, and the text the user wrote for it
(percent-encoded or not, quoted or not, even when libpq cannot parse it) is located in the DSN
itself. Any run of `MIN_FRAGMENT` or more characters of either that shows up in a message is
masked, so a message that quotes a cut piece of the password (libpq's parse errors do: the piece
after a '"' or a '/') shows none of it. Values that may hold a secret are never put into a
message in the first place (`may_hold_secret`); this module is the last line of defence.
"""
from __future__ import annotations

import functools
import re
from typing import Iterable, Sequence

import psycopg2.extensions

# Fragments shorter than this are not masked on their own: with 2 characters, every message
# would be riddled with '***' for any common pair, and 2 characters of a password give nothing away.
MIN_FRAGMENT = 3
MASK = "***"
# Longest piece kept in the lookup set: a longer run is masked as consecutive pieces, and the set
# stays linear in the secret's length (a 10 KB token in a DSN costs ~1 MB, not its square).
MAX_PIECE = 32

_PASSWORD_IN_TEXT = re.compile(r"(password\s*=\s*)\S+|(://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)
_URI_PREFIX = re.compile(r"^\s*postgres(?:ql)?://", re.IGNORECASE)
# In key=value form, a password value runs to the next `keyword=` (over-masking is safe: a value
# with an unbalanced quote or a space is exactly the case where libpq's own split is not the user's).
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*(.*?)(?=\s+[A-Za-z_]+\s*=|\s*$)", re.IGNORECASE | re.DOTALL)


def dsn_password(dsn: str) -> str | None:
    try:
        return psycopg2.extensions.parse_dsn(dsn).get("password") if dsn else None
    except psycopg2.ProgrammingError:
        return None


def dsn_secrets(dsn: str) -> list[str]:
    """Every text in `dsn` that is or may be its password: libpq's parsed value and the text as written."""
    if not dsn:
        return []
    found = [dsn_password(dsn)]
    if _URI_PREFIX.match(dsn):
        authority = dsn.split("://", 1)[1]
        if "@" in authority:
            userinfo = authority.rsplit("@", 1)[0]  # a password may hold an unencoded '@' or '/': up to the last '@'
            if ":" in userinfo:
                written = userinfo.split(":", 1)[1]
                found += [written, _percent_decoded(written)]
    else:
        found += [m.group(1) for m in _KEYWORD_PASSWORD.finditer(dsn)]
        found += [value.strip("'\"").replace("\\'", "'").replace("\\\\", "\\") for value in found[1:] if value]
    return sorted({s for s in found if s}, key=len, reverse=True)


def may_hold_secret(text: str) -> bool:
    """Whether a value written in a file could be a connection string (and so hold a password).

    libpq reads a string as a conninfo when it starts with postgres(ql):// or holds a '=';
    an '@' is a URI's userinfo with a mangled prefix. Such values are never echoed in messages."""
    return bool(_URI_PREFIX.match(text)) or "=" in text or "@" in text or "://" in text


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove passwords from a message: DSN forms, and every fragment of the known secret strings."""
    text = _PASSWORD_IN_TEXT.sub(lambda m: (m.group(1) or m.group(2)) + MASK + ("" if m.group(1) else "@"), text)
    return _fragments(tuple(secrets)).mask(text) if secrets else text


@functools.lru_cache(maxsize=64)
def _fragments(secrets: tuple[str, ...]) -> "Fragments":
    return Fragments(secrets)


class Fragments:
    """Masks any run of `MIN_FRAGMENT`+ characters that is a piece of a secret (a whole short secret too).

    A run starts only where a `MIN_FRAGMENT`-gram of a secret occurs, and grows while it is still
    a substring of some secret (a set lookup per character)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.pieces: set[str] = set()
        self.short: list[str] = []
        self.grams: set[str] = set()
        for secret in secrets:
            if len(secret) < MIN_FRAGMENT:
                self.short.append(secret)
                continue
            n = len(secret)
            self.grams.update(secret[i:i + MIN_FRAGMENT] for i in range(n - MIN_FRAGMENT + 1))
            self.pieces.update(secret[i:j] for i in range(n)
                               for j in range(i + MIN_FRAGMENT, min(n, i + MAX_PIECE) + 1))

    def mask(self, text: str) -> str:
        # Candidate starts are found with str.find (C speed), so a 20 MB message costs one pass per gram.
        starts = sorted({i for gram in self.grams for i in _occurrences(text, gram)})
        out: list[str] = []
        pos = 0
        for i in starts:
            if i < pos:
                continue
            j = i + MIN_FRAGMENT
            while j < len(text) and j - i < MAX_PIECE and text[i:j + 1] in self.pieces:
                j += 1
            out += [text[pos:i], MASK]
            pos = j
        masked = "".join(out) + text[pos:]
        for secret in self.short:
            masked = masked.replace(secret, MASK)
        return masked


def _occurrences(text: str, gram: str) -> Iterable[int]:
    i = text.find(gram)
    while i >= 0:
        yield i
        i = text.find(gram, i + 1)


def connect_error(message: str, dsn: str) -> str:
    """A libpq connection error safe to show: for a DSN libpq cannot parse, only the kind of problem.

    libpq's parse errors quote pieces of the DSN ('invalid percent-encoded token: "<rest of the
    password>"'); what they quote is cut at libpq's idea of a boundary, not the user's. So the
    quoted parts go, whatever they hold; the fixed words of libpq's message stay."""
    if not _is_parse_error(message, dsn):
        return message
    first = message.strip().splitlines()[0] if message.strip() else ""
    kind = _LIBPQ_PARSE_ERRORS.search(first)
    what = kind.group(0) if kind else "libpq cannot parse it"
    return f"invalid connection string ({what}; the text is not shown as it may hold the password)"


def _is_parse_error(message: str, dsn: str) -> bool:
    if message.lstrip().lower().startswith("invalid dsn"):
        return True
    try:
        psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return True
    return False


# The fixed part of libpq's conninfo parse errors (fe-connect.c), without what they quote.
_LIBPQ_PARSE_ERRORS = re.compile(
    r"missing \"=\" after|unterminated quoted string|invalid connection option|invalid percent-encoded token"
    r"|forbidden value %00 in percent-encoded value|invalid URI query parameter"
    r"|(?:extra|missing) key/value separator \"=\" in URI query parameter|IPv6 host address may not be empty"
    r"|end of string reached when looking for matching \"]\"|unexpected character"
    r"|invalid URI propagated to internal parser routine")


def _percent_decoded(text: str) -> str:
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
