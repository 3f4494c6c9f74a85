"""``pgvigil backup prune``: retention by age and count, with two promises.

1. Per target, the newest complete backup and the newest successfully verified backup are
   always kept, whatever the flags say: retention must never leave a target with nothing to
   restore, nor with only backups nobody has proven.
2. Only files the state file records as made by ``pgvigil backup run`` are deleted. Anything
   else in the directory (a manual dump, another tool's files) is never touched.

A backup is kept when it is among the newest ``keep_last`` or younger than ``keep_days``
(either rule keeps it). Failed and interrupted runs are not backups: their entries and any
partial file they left are removed, unless the process might still be running.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.backup.pgclient import BackupError
from exporter.backup.state import StateFile, backups_of, belongs, is_orphaned

DAY = 86400.0


@dataclass(frozen=True)
class Decision:
    backup: str
    target: str
    keep: bool
    reason: str


def plan(state: dict[str, Any], keep_days: float | None, keep_last: int | None, now: float,
         target: str | None = None) -> list[Decision]:
    """What to keep and what to delete, with the reason, without touching anything."""
    decisions = []
    # a `databases:` target stands for its databases too (prod: prod's globals, prod/app, prod/postgres ...)
    targets = sorted({b["target"] for b in state["backups"] if belongs(b["target"], target)})
    for name in targets:
        complete = backups_of(state, target=name, status="complete")
        verified = [b for b in complete if (b.get("verify") or {}).get("success")]
        newest_verified = verified[0]["name"] if verified else None
        for rank, entry in enumerate(complete):
            age_days = (now - entry["finished"]) / DAY
            if rank == 0:
                reason = "newest backup"
            elif entry["name"] == newest_verified:
                reason = "newest verified backup"
            elif keep_last is not None and rank < keep_last:
                reason = f"one of the newest {keep_last}"
            elif keep_days is not None and age_days < keep_days:
                reason = f"younger than {keep_days:g} days"
            else:
                decisions.append(Decision(entry["name"], name, False, f"{age_days:.1f} days old, beyond retention"))
                continue
            decisions.append(Decision(entry["name"], name, True, reason))
        for entry in backups_of(state, target=name):
            if entry["status"] in ("failed", "interrupted"):
                decisions.append(Decision(entry["name"], name, False, f"{entry['status']} run"))
            elif entry["status"] == "running":
                # Dead on this host: interrupted (reaped on the next write). Elsewhere: leave it.
                decisions.append(Decision(entry["name"], name, is_orphaned(entry) is False,
                                          "running" if not is_orphaned(entry) else "interrupted run"))
    return decisions


def owned_paths(directory: Path, entry: dict[str, Any]) -> list[Path]:
    """The files this backup's run created, by the exact names a run gives them, inside the directory."""
    name = entry["name"]
    ours = {f"{name}.dump", f"{name}.dump.sha256", f"{name}.manifest.json", f".{name}.dump.partial",
            f"{name}.sql", f"{name}.sql.sha256", f".{name}.sql.partial"}  # .sql: a cluster's globals
    recorded = list(entry.get("files", {}).values()) + ([entry["partial"]] if entry.get("partial") else [])
    return [directory / f for f in recorded if f in ours]


def prune(directory: Path, keep_days: float | None, keep_last: int | None, target: str | None = None,
          dry_run: bool = False, now: float | None = None) -> list[Decision]:
    """Apply the plan; returns the decisions (deleted ones have keep=False)."""
    if keep_days is None and keep_last is None:
        raise BackupError("give --keep-days, --keep-last or both (or set them in the config's backup: section)")
    if keep_last is not None and keep_last < 1:
        raise BackupError("--keep-last must be at least 1")
    if keep_days is not None and keep_days < 0:
        raise BackupError("--keep-days cannot be negative")
    now = time.time() if now is None else now
    directory = Path(directory)
    state_file = StateFile(directory)
    if dry_run:
        return plan(state_file.read(), keep_days, keep_last, now, target)
    with state_file.update() as state:
        decisions = plan(state, keep_days, keep_last, now, target)
        doomed = {d.backup for d in decisions if not d.keep}
        for entry in [b for b in state["backups"] if b["name"] in doomed]:
            for path in owned_paths(directory, entry):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            state["backups"].remove(entry)
    return decisions
