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
                             "last_verify": {"at", "success", "restore", "backup", "message"}},
                 "prod": {..., "databases": ["app", "postgres"]},  # a `databases:` target (cluster.py)
                 "prod/app": {...}},
     "backups": [{"name", "target", "status": running|complete|failed|interrupted,
                  "started", "finished", "pid", "host", "partial",
                  "files": {"dump", "checksum", "manifest"}, "size_bytes", "sha256",
                  "error", "offsite": [...], "verify": {...}},
                 {"name": "prod-globals-...", "target": "prod", "kind": "globals",
                  "files": {"dump": "....sql", "checksum": "....sql.sha256"}, ...}]}

A `databases:` target's record lists the databases its latest run backed up (or tried to), each a
target of its own named `<target>/<datname>`; its own record and backups are the cluster's globals.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import stat
import time
from pathlib import Path
from typing import IO, Any, Iterator

from exporter.backup.pgclient import BackupError
from exporter.files import STATE_LIMIT, UnreadableFile, loads_json, read_limited

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
        fsync_dir(path.parent)
    except OSError as exc:  # a full disk, a read-only mount: name the file, not the temporary one
        raise BackupError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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
        try:  # a regular file of at most STATE_LIMIT: a FIFO or /dev/zero here must not hang or fill /metrics
            data = read_limited(self.path, STATE_LIMIT, "backup state file")
        except UnreadableFile as exc:
            if exc.missing:
                return empty_state()
            raise BackupError(str(exc)) from None
        damaged = "it is rewritten whole on every change, so this file was edited or damaged"
        try:
            state = loads_json(data.decode("utf-8"))  # bounded nesting, finite numbers only
        except UnicodeDecodeError as exc:
            raise BackupError(f"the backup state {self.path} is not UTF-8 (byte {exc.start}); {damaged}") from None
        except ValueError as exc:
            raise BackupError(f"the backup state {self.path} is not valid JSON ({exc}); {damaged}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise BackupError(f"the backup state {self.path} has an unknown format")
        state.setdefault("targets", {})
        state.setdefault("backups", [])
        problems = shape_problems(state)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BackupError(f"the backup state {self.path} is damaged: {problems[0]}{more}; {damaged}")
        return state

    @contextlib.contextmanager
    def update(self) -> Iterator[State]:
        """Lock, read, let the caller change the state, write it back atomically."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = open_lock_file(self.directory / LOCK_NAME)
        except OSError as exc:
            raise BackupError(f"cannot write the backup state in {self.directory}: {exc.strerror}") from None
        with lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                state = self.read()
                reap_interrupted(state)
                yield state
                write_file_atomically(self.path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def open_lock_file(path: Path) -> IO[str]:
    """The lock file, created when missing; never blocking on the open (a FIFO planted there would hang
    the opener until a reader came), and refused unless it is a regular file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BackupError(f"{path}: cannot use the lock file: not a regular file")
    return os.fdopen(fd, "a")


# -- shape: what every reader of the state relies on, checked once when the file is read ----------

# Numbers end up in metrics, in alerts' arithmetic (time() - timestamp) and in os.kill(): each kind has
# its range. A timestamp in the future would keep "backup too old" silent, so one past now + MAX_CLOCK_SKEW
# is damage; durations may be negative (the wall clock stepped back during a run).
MAX_CLOCK_SKEW = 86400.0
PID_MAX = 4194304  # Linux's PID_MAX_LIMIT; 0 means unknown
MAX_COUNT = 2**53  # exact as a float sample
MAX_BYTES = 2**63
MAX_DURATION = 1e9  # about 31 years

_TIMESTAMP = "a Unix time (seconds, not in the future)"
_OPTIONAL_TIMESTAMP = "a Unix time (seconds, not in the future) or null"
_OPTIONAL_BYTES = "a size in bytes (0 or more) or null"
_OPTIONAL_DURATION = "a duration in seconds or null"
_FLAG = "true, false or null"
_TEXT = "a string"
_FILE = "a file name in the backup directory"
_VERIFY = {"at": _OPTIONAL_TIMESTAMP, "success": _FLAG}
_RECORD_FIELDS = {
    "failures_total": "a count",
    "databases": "a list of database names",
    "previous_size_bytes": _OPTIONAL_BYTES,
    "last_run": {"started": _OPTIONAL_TIMESTAMP, "finished": _OPTIONAL_TIMESTAMP, "success": _FLAG},
    "last_success": {"finished": _OPTIONAL_TIMESTAMP, "size_bytes": _OPTIONAL_BYTES,
                     "duration_seconds": _OPTIONAL_DURATION},
    "last_verify": _VERIFY,
    "last_restore": {"at": _OPTIONAL_TIMESTAMP, "duration_seconds": _OPTIONAL_DURATION},
}
_ENTRY_REQUIRED = {"name": _FILE, "target": _TEXT, "status": "running, complete, failed or interrupted",
                   "started": _TIMESTAMP}
_ENTRY_OPTIONAL = {"finished": _OPTIONAL_TIMESTAMP, "pid": "a process id", "host": _TEXT, "partial": _FILE,
                   "size_bytes": _OPTIONAL_BYTES, "files": "a mapping of file names", "offsite": "a list",
                   "verify": _VERIFY, "kind": "database or globals", "note": _TEXT}
_STATUSES = ("running", "complete", "failed", "interrupted")


def _number_within(value: Any, low: float, high: float) -> bool:
    # loads_json refuses NaN and infinities; isfinite also covers a state built in code
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def _fits(value: Any, kind: str) -> bool:
    if kind in (_TIMESTAMP, _OPTIONAL_TIMESTAMP, _OPTIONAL_BYTES, _OPTIONAL_DURATION):
        if value is None:
            return kind != _TIMESTAMP
        if kind in (_TIMESTAMP, _OPTIONAL_TIMESTAMP):
            return _number_within(value, 0, time.time() + MAX_CLOCK_SKEW)
        return _number_within(value, 0, MAX_BYTES) if kind == _OPTIONAL_BYTES else \
            _number_within(value, -MAX_DURATION, MAX_DURATION)
    return {
        _FLAG: value is None or isinstance(value, bool),
        _TEXT: isinstance(value, str),
        # joined to the directory by prune and verify: a path elsewhere ('/etc/passwd', '../x') is damage
        _FILE: value is None or (isinstance(value, str) and value not in ("", ".", "..") and "/" not in value),
        "a count": isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT,
        "a process id": isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= PID_MAX,
        "a mapping of file names": isinstance(value, dict) and all(_fits(v, _FILE) and v for v in value.values()),
        "a list": isinstance(value, list),
        "a list of database names": isinstance(value, list) and all(isinstance(v, str) and v for v in value),
        "database or globals": value in ("database", "globals"),
        _ENTRY_REQUIRED["status"]: value in _STATUSES,
    }[kind]


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def shape_problems(state: State) -> list[str]:
    """What is wrong with a parsed state document, each naming the place (`targets.primary.failures_total`)."""
    problems: list[str] = []
    if not isinstance(state["targets"], dict):
        problems.append(f"targets: expected a mapping of target name to record, got {_shown(state['targets'])}")
    else:
        for target, record in state["targets"].items():
            problems += _record_problems(f"targets.{target}", record, _RECORD_FIELDS)
    if not isinstance(state["backups"], list):
        problems.append(f"backups: expected a list, got {_shown(state['backups'])}")
        return problems
    for i, entry in enumerate(state["backups"]):
        where = f"backups[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping, got {_shown(entry)}")
            continue
        problems += [f"{where}: missing {key}" for key in _ENTRY_REQUIRED if key not in entry]
        problems += _record_problems(where, entry, {**_ENTRY_REQUIRED, **_ENTRY_OPTIONAL})
    return problems


def _record_problems(where: str, record: Any, fields: dict[str, Any]) -> list[str]:
    if not isinstance(record, dict):
        return [f"{where}: expected a mapping, got {_shown(record)}"]
    problems = []
    for key, kind in fields.items():
        if key not in record:
            continue
        if isinstance(kind, dict):
            if record[key] is not None:
                problems += _record_problems(f"{where}.{key}", record[key], kind)
        elif not _fits(record[key], kind):
            problems.append(f"{where}.{key}: expected {kind}, got {_shown(record[key])}")
    return problems


def target_record(state: State, target: str) -> dict[str, Any]:
    return state["targets"].setdefault(target, {"failures_total": 0})


def find_backup(state: State, name: str) -> dict[str, Any] | None:
    for entry in state["backups"]:
        if entry["name"] == name:
            return entry
    return None


def belongs(entry_target: str, target: str | None) -> bool:
    """Whether a backup of `entry_target` is one of `target`'s: itself, or one of its databases
    (`prod/app` is one of `prod`'s); every backup when `target` is None."""
    return target is None or entry_target == target or entry_target.startswith(target + "/")


def database_targets(state: State, target: str) -> list[str]:
    """The per-database targets of a `databases:` target, as its latest run listed them ([] for others)."""
    record = state["targets"].get(target) or {}
    return [f"{target}/{datname}" for datname in record.get("databases") or ()]


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
