"""What a parser hands the classifier of one log entry: a call, never a stored text.

A parser calls `Sink(severity, sqlstate, user, database, message, client)` once per entry; the
classifier keeps counts only. Texts live for the length of that call.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

# severity, sqlstate (None: the format has none for this entry), user, database, message, client host
Sink = Callable[[str, "str | None", str, str, str, str], None]

# An entry longer than this (a huge logged statement) is skipped, counted as a parse error,
# rather than held: the reader's memory stays bounded by the chunk plus this.
MAX_ENTRY_BYTES = 4 * 1024 * 1024


class Parsed(NamedTuple):
    consumed: int  # bytes of the buffer that held complete entries; the rest waits for the next read
    entries: int
    errors: int


def decode(data: bytes) -> str:
    """Log bytes as text: a byte that is not UTF-8 (a client_encoding mix-up, a cut character) becomes U+FFFD."""
    return data.decode("utf-8", errors="replace")
