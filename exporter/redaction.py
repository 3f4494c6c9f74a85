"""Secrets out of text: DSN passwords and known secret strings never reach logs, metrics or errors."""
from __future__ import annotations

import re
from typing import Sequence

import psycopg2.extensions

_PASSWORD_IN_TEXT = re.compile(r"(password\s*=\s*)\S+|(://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove passwords from a message: DSN forms and any known secret strings."""
    text = _PASSWORD_IN_TEXT.sub(lambda m: (m.group(1) or m.group(2)) + "***" + ("" if m.group(1) else "@"), text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def dsn_password(dsn: str) -> str | None:
    try:
        return psycopg2.extensions.parse_dsn(dsn).get("password") if dsn else None
    except psycopg2.ProgrammingError:
        return None
