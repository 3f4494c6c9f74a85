"""Log setup: text or JSON lines on stderr; secrets are scrubbed before anything is written."""
from __future__ import annotations

import json
import logging
import sys
import time

from exporter.redaction import redact

LEVELS = ("debug", "info", "warning", "error")

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def loggable(name: str) -> str:
    """A name from outside (a database's, a target's) as it may appear in a text log line.

    A database name can hold any character but NUL: a newline in one would start a forged log line,
    an escape sequence would rewrite the terminal. Every character that is not printable (controls,
    line and paragraph separators, format characters such as bidi overrides), and the backslash that
    introduces the escapes, is written as a Python-style escape; a byte that was not UTF-8 (decoded
    with surrogateescape, see scrape/discovery.py) as the byte it was, `\\xff`."""
    if name.isprintable() and "\\" not in name:
        return name
    return "".join(_escape(c) for c in name)


def _escape(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c.isprintable():
        return c
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that could not be decoded
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


class _RedactingFilter(logging.Filter):
    """Last line of defence: scrub DSN passwords and known secrets from every record."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: str = "text", secrets: list[str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter(secrets or []))
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
