"""Reading a file we do not trust: every file pgvigil reads goes through here.

A path in a config, on the command line or in the backup directory may name anything: a FIFO
(reading it blocks until a writer comes, and `/metrics` with it), `/dev/zero` behind a symlink
(reading it never ends and fills memory), a directory, a file of gigabytes. So a file is read only when,
after following symlinks, it is a regular file no larger than the cap for its kind. It is opened with
O_NONBLOCK (opening a FIFO does not wait for a writer), checked with fstat before any byte is read, and
read at most one byte past its cap (a file growing after the check is refused too). Whatever is wrong
ends in one `UnreadableFile`: `PATH: cannot read WHAT: REASON`.

JSON from such a file is parsed by `loads_json`: nesting is bounded (CPython's decoder recurses),
and NaN, Infinity, numbers that overflow a float and integers past 64 bits are refused, so no
`+Inf` timestamp or unrepresentable count reaches a metric or a comparison.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import IO, Any

KiB = 1024
MiB = 1024 * KiB

# The caps, one per kind of file (docs/security.md, "Files"): far above any real file of the kind.
CONFIG_LIMIT = 4 * MiB      # YAML: --config, query packs, --web-config, --thresholds, --objectives, profiles
SECRET_LIMIT = 64 * KiB     # dsn_file: one connection string
PEM_LIMIT = 1 * MiB         # TLS certificate, key and client CA bundle of the web config
STATE_LIMIT = 16 * MiB      # pgvigil-backup-state.json: about 1 KB per backup it lists
MANIFEST_LIMIT = 64 * MiB   # a backup's manifest: about 100 bytes per table
CHECKSUM_LIMIT = 64 * KiB   # a backup's .sha256 file: one line
JSON_DEPTH = 32             # nesting of a JSON document (ours are 5 deep)

_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


class UnreadableFile(Exception):
    """A file pgvigil refused to read or could not read: `PATH: cannot read WHAT: REASON`."""

    def __init__(self, path: str | os.PathLike, what: str, reason: str, missing: bool = False) -> None:
        super().__init__(f"{shown_path(path)}: cannot read {what}: {reason}")
        self.path, self.what, self.reason, self.missing = path, what, reason, missing


def shown_path(path: str | os.PathLike) -> str:
    """A path as messages show it: quoted when it holds a NUL, a newline or another control character."""
    text = os.fspath(path)
    text = text if isinstance(text, str) else os.fsdecode(text)
    return text if text.isprintable() else repr(text)


def read_limited(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of the regular file `path` (symlinks followed), at most `limit` of them."""
    with open_regular(path, what, limit) as fh:
        fd = fh.fileno()
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(MiB, limit + 1 - total))
            except OSError as exc:  # EIO on a failing disk, EISDIR on exotic filesystems
                raise UnreadableFile(path, what, _os_reason(exc)) from None
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew after fstat
                raise UnreadableFile(path, what, f"over the {size_text(limit)} limit")


def read_text(path: str | os.PathLike, limit: int, what: str) -> str:
    """`read_limited` as UTF-8 text; a byte that is not UTF-8 arrives as a lone surrogate
    (errors="surrogateescape"), for the YAML loader to report with its line."""
    return read_limited(path, limit, what).decode("utf-8", errors="surrogateescape")


def check_regular(path: str | os.PathLike, limit: int, what: str) -> None:
    """Refuse what `read_limited` would refuse, for a file a library opens by name (ssl's PEM files)."""
    with open_regular(path, what, limit):
        pass


def open_regular(path: str | os.PathLike, what: str, limit: int | None = None) -> IO[bytes]:
    """The regular file `path` (symlinks followed) opened for reading, never blocking on the open;
    with `limit`, refused when larger. For a file read in a stream (a backup's dump), no limit."""
    try:
        # stat first: a device is refused without being opened (opening a tape rewinds it)
        _check_mode(path, what, os.stat(path), limit)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnreadableFile(path, what, _os_reason(exc), missing=exc.errno in (errno.ENOENT, errno.ENOTDIR)) from None
    except ValueError:  # "embedded null byte"
        raise UnreadableFile(path, what, "the path contains a NUL byte") from None
    try:
        _check_mode(path, what, os.fstat(fd), limit)  # the file opened is the one checked, whatever was swapped in
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_mode(path: str | os.PathLike, what: str, st: os.stat_result, limit: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "a special file")
        raise UnreadableFile(path, what, f"not a regular file ({kind})")
    if limit is not None and st.st_size > limit:
        raise UnreadableFile(path, what, f"{st.st_size:,} bytes, over the {size_text(limit)} limit")


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "no such file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (exc.strerror or str(exc)).lower()


def size_text(size: int) -> str:
    """How a cap reads in a message: 4 MiB, 64 KiB, 1.5 GiB, 300 bytes."""
    for unit, scale in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


# -- JSON -----------------------------------------------------------------------------------------------

def loads_json(text: str | bytes, max_depth: int = JSON_DEPTH) -> Any:
    """Parse a JSON document from a file we do not trust; ValueError with the reason when it is not one
    we accept (syntax, nesting deeper than `max_depth`, a number that is not finite or not 64-bit)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    # The number hooks cost a Python call per number: only a document with a long run of digits or a
    # 3-digit exponent can hold a number they refuse (an integer past 64 bits, a float that overflows).
    checked = bool(_LONG_INTEGER.search(text) or _BIG_EXPONENT.search(text))
    try:
        if checked:
            value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
        else:
            value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if _too_deep(text, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


_LONG_INTEGER = re.compile(r"[0-9]{19}")
_BIG_EXPONENT = re.compile(r"[eE][-+]?[0-9]{3}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e999
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _bounded_int(text: str) -> int:
    # the length first: int() of 5,000 digits is refused by Python itself, with a message about its limit
    value = int(text) if len(text) <= 20 else None
    if value is None or not -2**63 <= value < 2**63:
        raise ValueError(f"the integer {text[:22]}{'...' if len(text) > 22 else ''} does not fit in 64 bits")
    return value


def _too_deep(text: str, max_depth: int) -> bool:
    """Nesting of a document json.loads accepted, counted on its brackets outside strings: each pass
    removes the innermost pairs, so `max_depth` passes empty a document that is not deeper."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = _INNERMOST.sub("", brackets)
    return bool(brackets)


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")
