"""``pgvigil backup status``: what each recorded backup is worth right now.

The condition of a backup comes from the state file plus a cheap look at the disk (the
file exists and has the recorded size); re-hashing is ``verify``'s job.

Conditions: ``restored`` (last verification restored it), ``verified`` (checksum and archive
listing passed), ``unverified``, ``verify-failed``, ``missing`` / ``damaged`` (file gone or
a different size), ``running``, ``interrupted``, ``failed``. Only the first three are good.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exporter.backup.sizes import human_size
from exporter.backup.state import StateFile, backups_of, belongs, is_orphaned
from exporter.logs import loggable

GOOD = frozenset({"restored", "verified", "unverified"})


@dataclass(frozen=True)
class BackupStatus:
    name: str
    target: str
    condition: str
    finished: float | None
    size_bytes: int | None
    verified_at: float | None
    note: str

    @property
    def good(self) -> bool:
        return self.condition in GOOD

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "condition": self.condition, "good": self.good,
                "finished": self.finished, "size_bytes": self.size_bytes, "verified_at": self.verified_at,
                "note": self.note}


def condition_of(directory: Path, entry: dict[str, Any]) -> tuple[str, str]:
    status = entry["status"]
    if status == "running":
        return ("interrupted", "process gone") if is_orphaned(entry) else \
            ("running", f"pid {entry.get('pid')} on {entry.get('host')}")
    if status in ("failed", "interrupted"):
        return status, entry.get("error") or ""
    dump = directory / entry["files"]["dump"]
    if not dump.exists():
        return "missing", f"{dump.name} is gone"
    if dump.stat().st_size != entry["size_bytes"]:
        return "damaged", f"{dump.name} is {dump.stat().st_size} bytes, {entry['size_bytes']} were written"
    verify = entry.get("verify")
    note = entry.get("error") or entry.get("note") or ""
    if not verify:
        return "unverified", note
    if not verify["success"]:
        return "verify-failed", verify.get("message", "")
    return ("restored" if verify.get("restore") else "verified"), note


def backup_statuses(directory: Path, target: str | None = None) -> list[BackupStatus]:
    """Every recorded backup (of one target, when given, with its databases' for a `databases:` target),
    newest first."""
    directory = Path(directory)
    rows = []
    for entry in backups_of(StateFile(directory).read()):
        if not belongs(entry["target"], target):
            continue
        condition, note = condition_of(directory, entry)
        verify = entry.get("verify") or {}
        rows.append(BackupStatus(entry["name"], entry["target"], condition, entry.get("finished"),
                                 entry.get("size_bytes"), verify.get("at"), note))
    return rows


def when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def render_table(rows: list[BackupStatus]) -> str:
    header = ("BACKUP", "TARGET", "FINISHED (UTC)", "SIZE", "CONDITION", "VERIFIED (UTC)", "NOTE")
    # A target of a `databases:` backup holds a database's name, any character but NUL: escaped, as in logs.
    cells = [header] + [(r.name, loggable(r.target), when(r.finished), human_size(r.size_bytes), r.condition,
                         when(r.verified_at), loggable(r.note[:60])) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
