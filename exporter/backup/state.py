"""The state file next to the backups: what was made, what was verified, how runs ended.

One JSON document, ``pgvigil-backup-state.json``, rewritten whole on every
change through a temporary file, fsync and rename, so a reader (the exporter,
``status``) sees either the old or the new document, never half of one.
Writers serialize on an flock'ed lock file, because ``run``, ``verify`` and
``prune`` may overlap (cron jobs drift).

Shape::

    {"format": 1,
     "targets": {"primary": {"failures_total": 2,
                             "last_run": {"started", "finished", "success", "error", "backup"},
                             "last_success": {"finished", "size_bytes", "duration_seconds", "backup"},
                             "previous_size_bytes": 123,
                             "last_verify": {"at", "success", "restore", "backup", "message"}}},
     "backups": [{"name", "target", "status": running|complete|failed|interrupted,
                  "started", "finished", "pid", "host", "partial",
                  "files": {"dump", "checksum", "manifest"}, "size_bytes", "sha256",
                  "error", "offsite": [...], "verify": {...}}]}
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from exporter.backup.pgclient import BackupError

STATE_NAME = "pgvigil-backup-state.json"
LOCK_NAME = ".pgvigil-backup-state.lock"
FORMAT = 1

State = dict[str, Any]


def empty_state() -> State:
    return {"format": FORMAT, "targets": {}, "backups": []}


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: after a crash the file is old or new, never torn."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateFile:
    """The state of the backups in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_NAME

    def read(self) -> State:
        """The current state; an empty one when no backup ever ran here."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return empty_state()
        except OSError as exc:
            raise BackupError(f"cannot read the backup state {self.path}: {exc.strerror}") from None
        try:
            state = json.loads(text)
        except ValueError as exc:
            raise BackupError(f"the backup state {self.path} is not valid JSON ({exc}); "
                              "it is rewritten whole on every change, so this file was edited or damaged") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise BackupError(f"the backup state {self.path} has an unknown format")
        state.setdefault("targets", {})
        state.setdefault("backups", [])
        return state

    @contextlib.contextmanager
    def update(self) -> Iterator[State]:
        """Lock, read, let the caller change the state, write it back atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_NAME, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                state = self.read()
                reap_interrupted(state)
                yield state
                write_file_atomically(self.path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def target_record(state: State, target: str) -> dict[str, Any]:
    return state["targets"].setdefault(target, {"failures_total": 0})


def find_backup(state: State, name: str) -> dict[str, Any] | None:
    for entry in state["backups"]:
        if entry["name"] == name:
            return entry
    return None


def backups_of(state: State, target: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Backups, newest first, optionally of one target and one status."""
    chosen = [b for b in state["backups"]
              if (target is None or b["target"] == target) and (status is None or b["status"] == status)]
    return sorted(chosen, key=lambda b: (b.get("finished") or b.get("started") or 0), reverse=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphaned(entry: dict[str, Any]) -> bool:
    """A 'running' backup whose process is gone: killed, OOM, machine rebooted.

    Only decidable on the host that ran it; elsewhere (a shared mount) it stays 'running'.
    """
    return (entry["status"] == "running" and entry.get("host") == socket.gethostname()
            and not process_alive(int(entry.get("pid", 0))))


def reap_interrupted(state: State) -> None:
    """Record runs that died without saying so as failed runs, once."""
    for entry in state["backups"]:
        if is_orphaned(entry):
            entry["status"] = "interrupted"
            entry["error"] = "the backup process stopped before finishing (killed or crashed)"
            record = target_record(state, entry["target"])
            record["failures_total"] = record.get("failures_total", 0) + 1
            last = record.get("last_run") or {}
            if (last.get("started") or 0) <= entry["started"]:
                record["last_run"] = {"started": entry["started"], "finished": time.time(), "success": False,
                                      "error": entry["error"], "backup": entry["name"]}
