"""csvlog: one CSV record per entry, quoted fields may span lines (a statement, a DETAIL).

The C `csv` module does the field splitting; a record cut by the end of a read is found by quote
parity (every `"` inside a field is doubled, so a newline outside quotes has an even count before it)
and left for the next read.
"""
from __future__ import annotations

import csv
import io

from exporter.serverlog.entry import MAX_ENTRY_BYTES, Parsed, Sink, decode

# Column positions, the same from PostgreSQL 13 to 18 (later columns were only appended).
USER, DATABASE, CONNECTION_FROM, SEVERITY, SQLSTATE, MESSAGE = 1, 2, 4, 11, 12, 13
_MIN_COLUMNS = MESSAGE + 1
# The csv module refuses a field over 128 Ki characters and then parses on from the next line: the lines of
# a long quoted statement (any client's text) would be read as records, forging any severity or user.
# No buffer the reader hands over is longer than MAX_ENTRY_BYTES, so no field is refused.
csv.field_size_limit(max(csv.field_size_limit(), MAX_ENTRY_BYTES))


def complete_end(buf: bytes) -> int:
    """The length of the longest prefix of `buf` made of whole records (ending in a newline outside quotes)."""
    end = len(buf)
    before = buf.count(b'"')  # quotes before `end`: counted once, then reduced segment by segment (linear)
    while True:
        newline = buf.rfind(b"\n", 0, end)
        if newline < 0:
            return 0
        before -= buf.count(b'"', newline, end)
        if before % 2 == 0:
            return newline + 1
        end = newline


def parse(buf: bytes, sink: Sink) -> Parsed:
    end = complete_end(buf)
    if end == 0:
        return Parsed(0, 0, 0)
    entries = errors = 0
    reader = csv.reader(io.StringIO(decode(buf[:end]), newline=""))
    while True:
        try:
            for row in reader:
                if len(row) < _MIN_COLUMNS:
                    errors += 1
                    continue
                entries += 1
                client = row[CONNECTION_FROM]
                sink(row[SEVERITY], row[SQLSTATE] or None, row[USER], row[DATABASE], row[MESSAGE],
                     client.rpartition(":")[0] or client)
            break
        except csv.Error:  # a malformed record: the reader resynchronizes on the next line
            errors += 1
    return Parsed(end, entries, errors)
