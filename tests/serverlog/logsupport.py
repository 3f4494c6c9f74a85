"""Helpers of the server log tests: csvlog records written the way PostgreSQL writes them, and a recording sink."""
from __future__ import annotations


def csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def csv_record(message: str, severity: str = "LOG", sqlstate: str = "00000", user: str = "app",
               database: str = "app", client: str = "127.0.0.1:5000", statement: str = "") -> bytes:
    """One csvlog record (PostgreSQL 13+ columns), message and statement quoted as the server quotes them."""
    fields = ["2026-12-07 11:00:00.123 UTC", csv_field(user), csv_field(database), "4242", csv_field(client),
              "6571a2b3.1092", "1", '"SELECT"', "2026-12-07 11:00:00 UTC", "3/1", "0", severity, sqlstate,
              csv_field(message), "", "", "", "", "", csv_field(statement) if statement else "", "", "",
              '"psql"', '"client backend"', "", "0"]
    return (",".join(fields) + "\n").encode()


class Recorder:
    def __init__(self) -> None:
        self.entries: list[tuple] = []

    def __call__(self, *entry) -> None:
        self.entries.append(entry)
