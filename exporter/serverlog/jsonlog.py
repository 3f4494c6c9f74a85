"""jsonlog (PostgreSQL 15+): one JSON object per line; newlines inside values are escaped."""
from __future__ import annotations

import json

from exporter.serverlog.entry import Parsed, Sink, decode


def parse(buf: bytes, sink: Sink) -> Parsed:
    end = buf.rfind(b"\n") + 1
    if end == 0:
        return Parsed(0, 0, 0)
    entries = errors = 0
    loads = json.loads
    for line in decode(buf[:end]).split("\n"):
        if not line:
            continue
        try:
            obj = loads(line)
        except (ValueError, RecursionError):  # RecursionError: deep nesting (not PostgreSQL's, a stray file's)
            errors += 1
            continue
        if not isinstance(obj, dict):
            errors += 1
            continue
        severity, message = obj.get("error_severity"), obj.get("message")
        if not isinstance(severity, str) or not isinstance(message, str):
            errors += 1
            continue
        entries += 1
        state = obj.get("state_code")
        sink(severity, state if isinstance(state, str) else None, _text(obj.get("user")), _text(obj.get("dbname")),
             message, _text(obj.get("remote_host")))
    return Parsed(end, entries, errors)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
