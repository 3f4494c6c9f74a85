"""Secrets out of text: DSN passwords and known secret strings never reach logs, metrics or errors.

Masking works from structure, not from patterns over messages:

- In any text, a conninfo `password=` value (quoted or bare) and a URI's password (`scheme://user:PASS@`)
  are masked whatever their length.
- The known secrets (what libpq's own parser, `psycopg.conninfo.conninfo_to_dict`, says the password is,
  the text the user wrote for it, and their percent-encoded forms) are masked:
  - one of `ANYWHERE` or more characters wherever it appears, even inside a word;
  - a shorter one (of `MIN_SECRET` or more) where it stands as a word: not glued to a letter, digit or '_';
  - a piece of one (`MIN_PIECE` or more characters) where libpq could have cut it (at the ends of the
    secret or next to one of its punctuation characters: libpq's messages quote such pieces, e.g. the part
    of a password after an unencoded '@' as a host name) and where it stands as a word in the text.
  A secret of one or two characters is masked by structure only: masking every "4" or "a" of every log
  line would garble the logs and tell a reader the password by where the masks are.

Values that may hold a secret are never put into a message in the first place (`may_hold_secret`, the
one rule config errors follow); this module's `redact` is the last line of defence.
"""
from __future__ import annotations

import functools
import re
import urllib.parse
from typing import Iterable, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

MASK = "***"
MIN_SECRET = 3  # shorter secrets are masked by structure only (see the module docstring)
MIN_PIECE = 4  # a cut piece of a secret shorter than this gives nothing away
ANYWHERE = 8  # a secret this long is masked even inside a word: it cannot be an accident of the text
# Longest piece kept in the lookup set: a longer run is masked as consecutive pieces, and the set
# stays linear in the secret's length (a 10 KB token in a DSN costs ~1 MB, not its square).
MAX_PIECE = 32

# `password = value`: quoted (libpq's quoting: backslash escapes, possibly unterminated) or bare.
_KEYWORD_IN_TEXT = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s'\"]\S*)", re.IGNORECASE | re.DOTALL)
# `scheme://user:password@`: up to the last '@' of the run without whitespace (a password may hold an '@').
_USERINFO_IN_TEXT = re.compile(r"([a-z][a-z0-9+.\-]*://[^\s:/@'\"]*:)\S*@", re.IGNORECASE)
_URI_PREFIX = re.compile(r"^\s*postgres(?:ql)?://", re.IGNORECASE)
# In key=value form, a password value runs to the next `keyword=` (over-masking is safe: a value
# with an unbalanced quote or a space is exactly the case where libpq's own split is not the user's).
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*(.*?)(?=\s+[A-Za-z_]+\s*=|\s*$)", re.IGNORECASE | re.DOTALL)
# Shapes of a value that may be or hold a secret (besides a conninfo/URI): a pgpass line
# (host:port:db:user:password), a `secret: value` pair, a percent-encoded '@'.
_SECRET_SHAPES = re.compile(r"^[^:\s]*:[^:\s]*:[^:\s]*:[^:\s]*:\S|(?:pass(?:word)?|passwd|pwd|secret|token"
                            r"|api[_-]?key)\s*[:=]|%40", re.IGNORECASE)


def dsn_password(dsn: str) -> str | None:
    """The password libpq reads from `dsn` (None when it has none or cannot be parsed).

    A parse error is dropped, never passed on: its message quotes pieces of the DSN."""
    if not dsn:
        return None
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None
    return None if password is None else str(password)


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
    """Whether a value written in a file could be or hold a secret, so that no message may echo it.

    libpq reads a string as a conninfo when it starts with postgres(ql):// or holds a '=' (so
    `password=` is covered); an '@' or '://' is a URI's userinfo with a mangled prefix; a pgpass line,
    a `token: ...` pair and a percent-encoded '@' are the other shapes a credential is written in."""
    return (bool(_URI_PREFIX.match(text)) or "=" in text or "@" in text or "://" in text
            or bool(_SECRET_SHAPES.search(text)))


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with passwords masked: by structure (`password=`, a URI's userinfo), then the known `secrets`."""
    text = _KEYWORD_IN_TEXT.sub(lambda m: m.group(1) + MASK, text)
    text = _USERINFO_IN_TEXT.sub(lambda m: m.group(1) + MASK + "@", text)
    return _masker(tuple(secrets)).mask(text) if secrets else text


@functools.lru_cache(maxsize=64)
def _masker(secrets: tuple[str, ...]) -> "SecretMasker":
    return SecretMasker(secrets)


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _boundary(text: str, i: int) -> bool:
    """Whether position `i` of `text` is not inside a word (a cut there leaves no letter on both sides)."""
    return i <= 0 or i >= len(text) or not (_is_word(text[i - 1]) and _is_word(text[i]))


class SecretMasker:
    """Masks the known secrets of a message (see the module docstring for the rules).

    A run starts only where a `MIN_SECRET`-gram of a secret occurs (found with str.find, at C speed,
    so a 20 MB message costs one pass per gram), and grows while it is still a substring of a secret
    (a set lookup per character); it is masked when it is a whole secret or a piece libpq could cut,
    standing as a word in the text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET:
                forms |= {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}
        self.anywhere = sorted((s for s in forms if len(s) >= ANYWHERE), key=len, reverse=True)
        self.pieces: set[str] = set()  # every substring up to MAX_PIECE: what a run may grow through
        self.cuttable: set[str] = set()  # the pieces that start and end where libpq may cut
        self.grams: set[str] = set()
        for secret in forms:
            n = len(secret)
            self.grams.update(secret[i:i + MIN_SECRET] for i in range(n - MIN_SECRET + 1))
            cuts = [i for i in range(n + 1) if _boundary(secret, i)]
            for i in range(n):
                self.pieces.update(secret[i:j] for j in range(i + MIN_SECRET, min(n, i + MAX_PIECE) + 1))
            for x, i in enumerate(cuts):
                for j in cuts[x + 1:]:
                    if j - i > MAX_PIECE:
                        break
                    if j - i >= MIN_PIECE or (i, j) == (0, n):
                        self.cuttable.add(secret[i:j])

    def mask(self, text: str) -> str:
        for secret in self.anywhere:
            text = text.replace(secret, MASK)
        starts = sorted({i for gram in self.grams for i in _occurrences(text, gram)})
        out: list[str] = []
        pos = 0
        chained = -1  # the end of a masked run that stopped at MAX_PIECE: the next one goes on from there
        for i in starts:
            if i < pos:
                continue
            j = i + MIN_SECRET
            while j < len(text) and j - i < MAX_PIECE and text[i:j + 1] in self.pieces:
                j += 1
            end = self._masked_end(text, i, j, continued=i == chained)
            if end is None:
                continue
            if i > pos or not out:  # a run continuing the previous one shares its mask
                out += [text[pos:i], MASK]
            pos = end
            chained = end if end - i == MAX_PIECE else -1
        return "".join(out) + text[pos:]

    def _masked_end(self, text: str, i: int, j: int, continued: bool) -> int | None:
        """Where the run of secret text from `i` (at most up to `j`) is masked to; None: it is not masked.

        The longest run that is a piece libpq could cut standing as a word in the text, or one of
        `ANYWHERE` characters or more; runs of `MAX_PIECE` (and what continues them) are no accident."""
        if continued or j - i == MAX_PIECE:
            return j
        starts_word = _boundary(text, i)
        for end in range(j, i + MIN_SECRET - 1, -1):
            piece = text[i:end]
            if piece in self.cuttable and (end - i >= ANYWHERE or (starts_word and _boundary(text, end))):
                return end
        return None


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
    if message.lstrip().lower().startswith(("invalid dsn", "invalid connection string")):
        return True
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:  # its message quotes the DSN: only the fact is used
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
