"""Where each log file was read up to, kept in the state file so a restart neither recounts nor skips.

A position is saved only for bytes whose entries were all counted (whole entries; the tail of a cut
entry is read again next time). The file is written whole to a temporary name and renamed, so a crash
leaves the previous state, never half of one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# 2: the first bytes are kept as a digest. Their text is the log's (a csvlog file's first entry holds a user
# name, maybe a password typed as one): copied as hex into the state file, it left the log's protection.
VERSION = 2
# Bytes of a file's beginning kept with its position: an inode reused by a new file is told apart by them.
HEAD_BYTES = 64
# ~200 bytes a file: room for ~300,000 log files (a directory nobody cleans, hourly files for years). At
# 1 MiB, a directory of ~5,000 files made a state this file refused at the next start: lines lost.
MAX_STATE_BYTES = 64 * 1024 * 1024


@dataclass
class Position:
    name: str
    offset: int
    head: bytes = b""
    skipping: bool = False  # in the middle of an entry too long to keep (not saved: a restart parses on)
    saved_head: tuple[int, str] = (0, "")  # from the state file: the first bytes' length and digest

    def head_size(self) -> int:
        return len(self.head) or self.saved_head[0]

    def head_is(self, data: bytes) -> bool:
        """Whether `data`, the file's first head_size() bytes, are the ones this position was read from."""
        return data == self.head if self.head else digest(data) == self.saved_head[1]


def digest(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()


def load(path: Path | None) -> dict[str, Position] | None:
    """The saved positions by file identity; None when there is no state (first start, or unreadable)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("log state file %s unreadable (%s): reading from the end of the log", path, exc.strerror)
        return None
    try:
        data = json.loads(raw) if len(raw) <= MAX_STATE_BYTES else None
        if not isinstance(data, dict) or data.get("version") not in (1, VERSION):
            raise ValueError
        return {str(identity): Position(name=str(entry["name"]), offset=_offset(entry["offset"]),
                                        saved_head=_saved_head(entry, data["version"]))
                for identity, entry in data["files"].items()}
    # RecursionError: a deeply nested file; an offset that is not a byte count (negative, a float such
    # as 1e400) would fail every read (a seek before the start) or the loading itself, at each cycle.
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        log.warning("log state file %s is not a pgvigil log state: reading from the end of the log", path)
        return None


def _saved_head(entry: dict, version: int) -> tuple[int, str]:
    if version == 1:  # the bytes themselves, hex: digested now, never written again
        head = bytes.fromhex(str(entry.get("head", "")))
        return len(head), digest(head)
    size, hexdigest = entry.get("head_size", 0), str(entry.get("head_sha256", ""))
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= HEAD_BYTES:
        raise ValueError
    return size, hexdigest


def _offset(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError
    return value


def save(path: Path | None, positions: dict[str, Position]) -> bool:
    if path is None:
        return True
    data = {"version": VERSION, "files": {identity: {"name": p.name, "offset": p.offset, "head_size": p.head_size(),
                                                     "head_sha256": digest(p.head) if p.head else p.saved_head[1]}
                                          for identity, p in positions.items()}}
    # A temporary name of its own (created exclusively): two processes given the same state file never
    # write into one temporary file, and a planted `<name>.tmp` symlink is not followed and truncated.
    temporary: str | None = None
    try:
        fd, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with open(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(temporary, path)
        return True
    except OSError as exc:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        log.warning("log state file %s not written (%s)", path, exc.strerror)
        return False
