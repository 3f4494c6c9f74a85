"""One read cycle of one target's log: list the files, follow rotation, read within the budget, parse.

Rotation: a file not seen before is a new file (read from its start); a known identity under another
name was renamed (read on); a file smaller than its position was truncated (read again from 0); a
file gone from the listing, or while it was read, was deleted. Older files are finished before newer
ones, so an entry is counted once and in order.
"""
from __future__ import annotations

import re
from typing import Callable

from exporter.serverlog.counters import LogCounters
from exporter.serverlog.entry import MAX_ENTRY_BYTES, Parsed, Sink
from exporter.serverlog.positions import HEAD_BYTES, Position
from exporter.serverlog.source import LogFile, LogSource, SourceError

CHUNK_BYTES = 1024 * 1024
# Where the next entry begins after one too long to keep. csvlog: a newline and the log_time of the next
# record (a newline alone may be inside the long quoted field); the line formats: any newline not followed
# by a tab (a continuation line).
_NEXT_ENTRY = {"csvlog": re.compile(rb"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)"),
               "jsonlog": re.compile(rb"\n(?=\{)"), "stderr": re.compile(rb"\n(?=[^\t])")}
Parser = Callable[[bytes, Sink], Parsed]


class LogReader:
    def __init__(self, source: LogSource, fmt: str, parser: Parser, sink: Sink, counters: LogCounters,
                 positions: dict[str, Position] | None) -> None:
        self.source, self.fmt, self.parser, self.sink, self.counters = source, fmt, parser, sink, counters
        # None: nothing saved; the first listing then starts every existing file at its end (history is
        # not counted: it may be years of log, and its counts would land at one instant).
        self.positions = positions
        self.verified: set[str] = set()  # identities whose first bytes were checked against the saved ones

    def cycle(self, budget: int) -> None:
        """Read up to `budget` bytes; raises SourceError when the log cannot be listed."""
        files = sorted(self.source.files(self.fmt), key=lambda f: (f.mtime, f.name))
        counters = self.counters
        if self.positions is None:
            self.positions = {f.identity: Position(f.name, f.size, self._head(f)) for f in files}
        positions = self.positions
        listed = {f.identity for f in files}
        for identity in [i for i in positions if i not in listed]:
            del positions[identity]
            self._rotated("deleted")
        left = budget
        for file in files:
            position = positions.get(file.identity)
            if position is None or not self._same_file(file, position):
                position = positions[file.identity] = Position(file.name, 0)
                self._rotated("new_file")
            elif position.name != file.name:
                position.name = file.name
                self._rotated("renamed")
            if file.size < position.offset:
                position.offset, position.head, position.saved_head = 0, b"", (0, "")
                self._rotated("truncated")
            if left > 0 and position.offset < file.size:
                try:
                    left -= self._read(file, position, left, whole=left == budget)
                except SourceError as exc:
                    if exc.reason != "deleted":
                        raise
                    positions.pop(file.identity, None)
                    self._rotated("deleted")
        with counters.lock:
            counters.backlog_bytes = sum(max(0, f.size - positions[f.identity].offset)
                                         for f in files if f.identity in positions)

    def _read(self, file: LogFile, position: Position, budget: int, whole: bool = False) -> int:
        """Parse whole entries from `position` on; returns the bytes read. `whole`: `budget` is the cycle's
        entire budget, so an entry it cannot hold would not fit next cycle either."""
        spent = 0
        progressed = stretching = False  # stretching: reading one entry larger than the whole budget
        want = CHUNK_BYTES
        while spent < budget or stretching:
            available = file.size - position.offset
            length = min(want, available) if stretching else min(want, budget - spent, available)
            if length <= 0:
                break
            data = self.source.read(file, position.offset, length)
            spent += len(data)
            if not data:
                break
            if position.offset < HEAD_BYTES and len(position.head) >= position.offset:  # (not: a saved digest)
                position.head = (position.head[:position.offset] + data)[:HEAD_BYTES]
            if position.skipping:  # inside an entry too long to keep: drop bytes up to the next entry's start
                start = self.resync(data)
                if start is None:
                    position.offset += len(data)
                    continue
                position.skipping = False
                position.offset += start
                data = data[start:]
            # One lock per chunk, not per entry: a scrape copying the counters waits one chunk's parse at most.
            with self.counters.lock:
                parsed = self.parser(data, self.sink)
                self.counters.read_bytes += len(data)
                self.counters.entries += parsed.entries
                self.counters.parse_errors += parsed.errors
            if parsed.consumed:
                position.offset += parsed.consumed
                progressed, stretching = True, False
                want = CHUNK_BYTES
            elif length == available:  # the file's last entry is not whole yet: wait for the rest
                break
            elif length >= MAX_ENTRY_BYTES:  # one entry larger than any kept: skipped, counted
                position.skipping, stretching = True, False
                with self.counters.lock:
                    self.counters.parse_errors += 1
                want = CHUNK_BYTES
            elif length < want and (progressed or not whole):  # the budget ends inside an entry: read next cycle
                break
            elif length < want:  # one entry larger than the whole budget (any client's long statement): the
                stretching = True  # reading would stop at it forever; it alone is read over budget, once
            else:  # one entry longer than the chunk: read more of it at once
                want = min(want * 4, MAX_ENTRY_BYTES)
        return spent

    def resync(self, data: bytes) -> int | None:
        found = _NEXT_ENTRY[self.fmt].search(data, 1)
        return found.end() if found else None

    def _head(self, file: LogFile) -> bytes:
        try:
            return self.source.read(file, 0, min(HEAD_BYTES, file.size)) if file.size else b""
        except SourceError:
            return b""

    def _same_file(self, file: LogFile, position: Position) -> bool:
        """A saved identity whose first bytes changed is a new file that reuses the inode."""
        if not position.head_size() or file.identity in self.verified:
            return True
        self.verified.add(file.identity)
        try:
            return position.head_is(self.source.read(file, 0, position.head_size()))
        except SourceError:
            return True

    def _rotated(self, reason: str) -> None:
        with self.counters.lock:
            self.counters.rotations.add((reason,))
