"""The server processes the dev tools start (PostgreSQL, PgBouncer, Prometheus, Alertmanager): each in a
session of its own, stopped with a bounded wait and SIGKILL after it, and proven gone.

Each server runs in a session of its own (`start_new_session=True`; pg_ctl makes the postmaster a session
leader by itself), so a terminal's Ctrl-C, sent to its foreground process group, reaches the demo
alone: PgBouncer would take that SIGINT as its "safe shutdown", which waits for its clients, and
PostgreSQL as a fast shutdown, before the demo could stop them in order. A session is also how a
server's processes are found again (runuser's child, a service's helpers): every process whose session
id is the leader's pid. PostgreSQL's are the exception, as each child of the postmaster leads a session
of its own: they are the processes working in the cluster's directory (`working_in`).

`track()` keeps what a helper made (a throwaway cluster, a PgBouncer, a service) until its `cleanup()`
forgets it; `cleanup_all()` runs at exit, so an interrupted demo, bench or test run leaves no server
and no directory behind even when its own cleanup never ran. Linux only (/proc), like the rest of dev/.
"""
from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Protocol


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]; None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2:].split()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended; only its parent's wait() is missing)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def session_members(sid: int) -> list[int]:
    """The live processes of session `sid`, its leader included."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] not in ("Z", "X") and int(fields[3]) == sid:
                found.append(int(entry.name))
    return sorted(found)


def working_in(directory: Path) -> list[int]:
    """The live processes whose working directory is `directory` or below it (a postmaster and its children
    work in the data directory)."""
    top = str(Path(directory).resolve())
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                cwd = os.readlink(f"/proc/{entry.name}/cwd")
            except OSError:
                continue
            if cwd == top or cwd.startswith(top + "/"):
                found.append(int(entry.name))
    return sorted(found)


def describe(pid: int) -> str:
    """`pid 123 (postgres -D /tmp/...)` for messages."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(part.decode(errors="replace") for part in argv if part)
    except OSError:
        command = ""
    return f"pid {pid} ({command[:120]})" if command else f"pid {pid}"


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(find: Callable[[], list[int]], timeout: float) -> list[int]:
    """Wait up to `timeout` seconds until `find()` finds no process; what it finds then."""
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def stop_processes(find: Callable[[], list[int]], signum: int | None = signal.SIGTERM,
                   grace: float = 5.0) -> list[int]:
    """Send `signum` (None: none, the caller asked the server to stop its own way) to the processes `find()`
    finds, wait up to `grace` seconds for them to end, then SIGKILL what is left and wait 5 s more. Returns
    the processes that survived even that (none, unless they belong to a user we may not signal)."""
    if os.getpid() in find():
        raise ValueError("refusing to signal these processes: the caller is one of them")
    if signum is not None:
        _signal_all(find(), signum)
    left = wait_gone(find, grace)
    if left:
        _signal_all(left, signal.SIGKILL)
        left = wait_gone(find, 5.0)
    return left


def stop_session(sid: int, signum: int | None = signal.SIGTERM, grace: float = 5.0) -> list[int]:
    """`stop_processes` for every process of session `sid`."""
    if sid in (os.getsid(0), os.getpgrp(), 0, 1):
        raise ValueError(f"refusing to signal session {sid}: it is the caller's own or init's")
    return stop_processes(lambda: session_members(sid), signum, grace)


class Cleanable(Protocol):
    def cleanup(self) -> object: ...


_tracked: list[Cleanable] = []
_lock = threading.Lock()


def track(thing: Cleanable) -> None:
    """Remember `thing` until `forget(thing)`: `cleanup_all()` cleans it up if nothing else did."""
    with _lock:
        _tracked.append(thing)


def forget(thing: Cleanable) -> None:
    with _lock:
        if thing in _tracked:
            _tracked.remove(thing)


def tracked() -> list[Cleanable]:
    """What was made and not cleaned up yet, oldest first."""
    with _lock:
        return list(_tracked)


def cleanup_all() -> list[str]:
    """Clean up everything still tracked, newest first (a standby before its primary); their descriptions."""
    cleaned = []
    for thing in reversed(tracked()):
        cleaned.append(repr(thing))
        try:
            thing.cleanup()
        except Exception:  # noqa: BLE001 (one failing cleanup must not keep the others from running)
            pass
        forget(thing)
    return cleaned


atexit.register(cleanup_all)
