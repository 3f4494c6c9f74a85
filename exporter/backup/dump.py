"""``pgvigil backup run``: one pg_dump in custom format, checksummed, with a manifest.

A backup becomes visible only when it is complete: pg_dump streams into a
hidden ``.NAME.dump.partial`` file, the checksum file and the manifest are
written, and only then is the partial renamed to ``NAME.dump`` and the state
entry marked complete. A dump that fails or is killed leaves at most a
partial file that the state lists as failed or interrupted, never a
``complete`` entry.

Row counts in the manifest are exact and consistent with the dump: this
process exports a snapshot (REPEATABLE READ), pg_dump runs with
``--snapshot`` on it, and the counts are taken inside the exporting
transaction while pg_dump streams, so both see the same rows.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import psycopg
from psycopg import sql

from exporter.backup import pgclient
from exporter.backup.pgclient import BackupError, Conninfo, client_program, safe_name
from exporter.backup.sizes import human_size
from exporter.backup.state import StateFile, find_backup, fsync_dir, target_record, write_file_atomically

CHUNK = 1 << 20

# Tables whose data pg_dump writes: ordinary tables outside the system schemas that are not
# temporary and not owned by an extension (pg_dump skips extension members' data).
TABLES_SQL = """
SELECT n.nspname, c.relname, CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


# What pg_dump must read besides the tables above: it locks every table and partitioned table and
# reads every sequence, so a role without SELECT on one of them fails half-way. Checked up front.
UNREADABLE_SQL = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
  AND NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'))
ORDER BY 1
"""


def read_grant_hint(role: str, version_num: int) -> str:
    """The grant that lets `role` dump a whole database, for the server's version."""
    if version_num >= 140000:
        return f"GRANT pg_read_all_data TO {role};  (pg_monitor reads statistics, not table data)"
    return (f"GRANT USAGE ON SCHEMA ... TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA ... TO {role}; "
            f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA ... TO {role};  (per schema; pg_read_all_data needs 14+)")


def unreadable_error(role: str, version_num: int, relations: Sequence[str]) -> str:
    shown = ", ".join(relations[:5]) + (f" and {len(relations) - 5} more" if len(relations) > 5 else "")
    return (f"role {role} cannot read {len(relations)} table(s) or sequence(s) pg_dump must dump "
            f"(permission denied for {shown}); give it read access: {read_grant_hint(role, version_num)}")


def backup_files(name: str) -> dict[str, str]:
    return {"dump": f"{name}.dump", "checksum": f"{name}.dump.sha256", "manifest": f"{name}.manifest.json"}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_backup_name(directory: Path, target: str, now: float, taken: Sequence[str]) -> str:
    base = f"{safe_name(target)}-{datetime.fromtimestamp(now, timezone.utc):%Y%m%dT%H%M%SZ}"
    name, n = base, 1
    while name in taken or any((directory / f).exists() for f in backup_files(name).values()):
        n += 1
        name = f"{base}-{n}"
    return name


def _die_with_parent() -> None:
    """Runs in the pg_dump child: if pgvigil is SIGKILLed, take pg_dump down too (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Progress:
    """One self-overwriting status line on a terminal: tables dumped, bytes written, elapsed."""

    def __init__(self, stream: Any, tables_total: int, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tables_total = tables_total
        self.tables_done = 0
        self.current = ""
        self.started = time.monotonic()
        self._shown = 0.0

    def table(self, name: str) -> None:
        self.tables_done += 1
        self.current = name

    def show(self, written: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._shown < 0.5):
            return
        self._shown = now
        line = (f"\r  {self.tables_done}/{self.tables_total} tables, {human_size(written)} written, "
                f"{now - self.started:.0f}s  {self.current[:40]}")
        self.stream.write(line.ljust(100) + ("\n" if final else ""))
        self.stream.flush()


class _StderrReader(threading.Thread):
    """Drains pg_dump's stderr (a full pipe would block it) and feeds the progress line."""

    def __init__(self, pipe: Any, progress: Progress) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.progress = progress
        self.lines: list[str] = []

    def run(self) -> None:
        for raw in self.pipe:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            marker = "dumping contents of table "
            if marker in line:
                self.progress.table(line.split(marker, 1)[1].strip('"'))
            else:
                self.lines.append(line)

    def reason(self) -> str:
        """pg_dump's own error lines, the first ones (the cause; later ones follow from it)."""
        errors = [line for line in self.lines if any(k in line for k in ("error:", "DETAIL:", "detail:", "FATAL"))]
        return "\n".join(errors[:3])


class _RowCounter(threading.Thread):
    """Exact row counts inside the snapshot-exporting transaction, while pg_dump streams."""

    def __init__(self, conn: Any, tables: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.tables = tables
        self.error: str | None = None
        # Stops pg_dump when counting fails: the dump could no longer be vouched for, and pg_dump
        # (which waits for locks without a timeout) might otherwise run for hours or forever.
        self.on_error: Callable[[], None] = lambda: None

    def run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                for table in self.tables:
                    cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                        sql.Identifier(table["schema"]), sql.Identifier(table["name"])))
                    table["rows"] = cur.fetchall()[0][0]
        except psycopg.Error as exc:
            self.error = f"counting rows failed: {str(exc).strip()}"
            self.on_error()


def _snapshot_session(conninfo: Conninfo) -> tuple[Any, dict[str, Any]]:
    """Open the transaction whose snapshot pg_dump will use; read what the manifest needs."""
    conn = conninfo.connect(application_name="pgvigil backup")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_export_snapshot(), current_setting('server_version'), "
                    "current_setting('server_version_num')::int, current_database(), "
                    "pg_database_size(current_database())")
        snapshot, version, version_num, dbname, db_size = cur.fetchall()[0]
        cur.execute(UNREADABLE_SQL)
        unreadable = [row[0] for row in cur.fetchall()]
        if unreadable:
            cur.execute("SELECT current_user")
            role = cur.fetchall()[0][0]
            conn.close()
            raise BackupError(unreadable_error(role, version_num, unreadable))
        cur.execute(TABLES_SQL)
        tables = [{"schema": s, "name": n, "estimated_rows": est, "rows": None} for s, n, est in cur.fetchall()]
    return conn, {"snapshot": snapshot, "server_version": version, "server_version_num": version_num,
                  "database": dbname, "database_size_bytes": db_size, "tables": tables}


def _stream_dump(conninfo: Conninfo, snapshot: str, partial: Path, progress: Progress,
                 on_start: Callable[[subprocess.Popen], None], pg_dump: str) -> tuple[int, str, str]:
    """Run pg_dump -Fc into the partial file; returns (size, sha256, error or '')."""
    argv = [pg_dump, "--format=custom", "--verbose", f"--snapshot={snapshot}",
            f"--lock-wait-timeout={pgclient.LOCK_WAIT_SECONDS * 1000}", f"--dbname={conninfo.without_password()}"]
    return stream_program(argv, conninfo, partial, progress, on_start)


def stream_program(argv: list[str], conninfo: Conninfo, partial: Path, progress: Progress,
                   on_start: Callable[[subprocess.Popen], None] = lambda proc: None) -> tuple[int, str, str]:
    """Run a client program (pg_dump, pg_dumpall) into the partial file, hashing what it writes; returns
    (size, sha256, error or ''): its own error lines, redacted."""
    name = Path(argv[0]).name
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=conninfo.child_env(), preexec_fn=_die_with_parent)
    reader = _StderrReader(proc.stderr, progress)
    reader.start()
    on_start(proc)
    digest, size = hashlib.sha256(), 0
    assert proc.stdout is not None  # started with stdout=PIPE
    try:
        with open(partial, "wb") as out:
            while True:
                chunk = proc.stdout.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                progress.show(size)
            out.flush()
            os.fsync(out.fileno())
        rc = proc.wait()
    except BaseException as exc:
        proc.kill()
        proc.wait()
        if isinstance(exc, OSError):  # ENOSPC, EDQUOT, EROFS: a write carries no file name of its own
            raise BackupError(f"cannot write {partial}: {exc.strerror}") from None
        raise
    reader.join()
    progress.show(size, final=True)
    if rc != 0:
        why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        detail = reader.reason()
        return size, "", conninfo.redact(f"{name} failed ({why})" + (f": {detail}" if detail else ""))
    if size == 0:
        return size, "", f"{name} wrote nothing"
    return size, digest.hexdigest(), ""


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(f"stopped by signal {signum}")


def run_backup(dsn: str, target: str, directory: Path, progress: bool | None = None,
               offsite: Sequence[Any] = (), stream: Any = None) -> dict[str, Any]:
    """Make one backup of the database behind dsn; returns its state entry. Raises BackupError."""
    client_program("pg_dump")  # fail before recording a run when the binary is missing
    return recorded_run(dsn, target, directory, target, backup_files, "database",
                        lambda conninfo, entry: _make_backup(conninfo, target, Path(directory), entry, progress,
                                                             offsite, stream or sys.stderr))


def recorded_run(dsn: str, target: str, directory: Path, name_base: str, files_of: Callable[[str], dict[str, str]],
                 kind: str, make: Callable[[Conninfo, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """One run recorded in the state from start to end: `make` produces the backup of `entry` (named after
    `name_base`, its files from `files_of`); whatever stops it (an error, SIGTERM) leaves a failed entry,
    counted, and no file that could pass for a backup. Raises BackupError."""
    directory = Path(directory)
    conninfo = Conninfo.parse(dsn)
    state_file = StateFile(directory)
    started = time.time()
    with state_file.update() as state:
        name = new_backup_name(directory, name_base, started, [b["name"] for b in state["backups"]])
        files = files_of(name)
        entry = {"name": name, "target": target, "status": "running", "started": started, "finished": None,
                 "pid": os.getpid(), "host": socket.gethostname(), "partial": f".{files['dump']}.partial",
                 "files": files, "size_bytes": None, "sha256": None, "error": None, "offsite": [], "verify": None}
        if kind != "database":
            entry["kind"] = kind
        state["backups"].append(entry)
    # SIGTERM (systemd stop, timeout) should clean up like a failure, not leave a 'running' entry.
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        result = make(conninfo, entry)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, (BackupError, _Terminated)) else f"{type(exc).__name__}: {exc}"
        try:
            _record_failure(state_file, directory, entry, conninfo.redact(message))
        except BackupError as unrecorded:  # the disk is still full: the files are gone, say the state is behind
            message += f" (the failure is not recorded in the state: {unrecorded})"
        if isinstance(exc, (BackupError, _Terminated)):
            raise BackupError(conninfo.redact(message)) from None
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return result


def record_refusal(directory: Path, target: str, message: str) -> None:
    """A run that could not even start (a database pgvigil cannot connect to by name): a failed entry, counted,
    like any failed run of that target."""
    def refuse(conninfo: Conninfo, entry: dict[str, Any]) -> dict[str, Any]:
        raise BackupError(message)
    with contextlib.suppress(BackupError):
        recorded_run("", target, directory, target, backup_files, "database", refuse)


def _make_backup(conninfo: Conninfo, target: str, directory: Path, entry: dict[str, Any],
                 progress: bool | None, offsite: Sequence[Any], stream: Any) -> dict[str, Any]:
    files = entry["files"]
    conn, facts = _snapshot_session(conninfo)
    try:  # pg_dump refuses a newer server: pick one at least as new, or stop before dumping
        pg_dump = client_program("pg_dump", facts["server_version_num"])
    except BackupError:
        conn.close()
        raise
    counter = _RowCounter(conn, facts["tables"])

    def start_counting(dump: subprocess.Popen) -> None:
        counter.on_error = dump.terminate
        counter.start()

    try:
        show = stream.isatty() if progress is None else progress
        meter = Progress(stream, len(facts["tables"]), show)
        size, sha256, error = _stream_dump(conninfo, facts["snapshot"], directory / entry["partial"], meter,
                                           on_start=start_counting, pg_dump=pg_dump)
        if error:
            counter.join(timeout=1.0)  # its error, if it had one, may still be on its way
        if error and counter.error:
            # Counting failed first and ended the snapshot's transaction; pg_dump's "could not
            # import the requested snapshot" is only a consequence. Show the cause.
            raise BackupError(conninfo.redact(counter.error))
        if error:
            raise BackupError(error)
        counter.join()
        if counter.error:
            raise BackupError(conninfo.redact(counter.error))
    finally:
        if counter.is_alive():  # pg_dump failed or we were stopped: do not wait for the counts
            with contextlib.suppress(psycopg.Error):
                conn.cancel()
            counter.join()
        with contextlib.suppress(psycopg.Error):
            conn.close()
    finished = time.time()
    manifest = {
        "format": 1, "name": entry["name"], "target": target, "database": facts["database"],
        "server_version": facts["server_version"], "server_version_num": facts["server_version_num"],
        "started": iso(entry["started"]), "finished": iso(finished),
        "started_epoch": entry["started"], "finished_epoch": finished,
        "size_bytes": size, "sha256": sha256, "database_size_bytes": facts["database_size_bytes"],
        "row_counts": "exact, same snapshot as the dump", "tables": facts["tables"],
    }
    write_file_atomically(directory / files["manifest"], (json.dumps(manifest, indent=2) + "\n").encode())
    return finish_run(directory, target, entry, size, sha256, finished, offsite)


def finish_run(directory: Path, target: str, entry: dict[str, Any], size: int, sha256: str, finished: float,
               offsite: Sequence[Any]) -> dict[str, Any]:
    """The partial file made a backup: its checksum file written, renamed, copied off site, recorded."""
    files = entry["files"]
    write_file_atomically(directory / files["checksum"], f"{sha256}  {files['dump']}\n".encode())
    os.replace(directory / entry["partial"], directory / files["dump"])
    fsync_dir(directory)
    copies, offsite_error = [], None
    for place in offsite:
        try:
            copies.append(place.copy(directory, files, sha256, target))
        except BackupError as exc:
            offsite_error = f"off-site copy to {place.describe()} failed: {exc}"
            copies.append({"kind": place.kind, "location": place.describe(), "ok": False, "error": str(exc)})
    with StateFile(directory).update() as state:
        current = find_backup(state, entry["name"]) or entry
        current.update(status="complete", finished=finished, size_bytes=size, sha256=sha256, partial=None,
                       offsite=copies, error=offsite_error)
        if entry.get("note"):  # what the backup holds less than it might (a cluster's globals without passwords)
            current["note"] = entry["note"]
        record = target_record(state, target)
        record["last_run"] = {"started": entry["started"], "finished": finished, "success": offsite_error is None,
                              "error": offsite_error, "backup": entry["name"]}
        if offsite_error is None:
            previous = record.get("last_success")
            record["previous_size_bytes"] = previous["size_bytes"] if previous else None
            record["last_success"] = {"finished": finished, "size_bytes": size, "backup": entry["name"],
                                      "duration_seconds": finished - entry["started"]}
        else:
            record["failures_total"] = record.get("failures_total", 0) + 1
        entry = dict(current)
    if offsite_error:
        raise _OffsiteFailed(offsite_error, entry)
    return entry


class _OffsiteFailed(BackupError):
    """The local backup is complete and recorded; only a copy failed (the run still counts as failed)."""

    def __init__(self, message: str, entry: dict[str, Any]) -> None:
        super().__init__(message)
        self.entry = entry


def _record_failure(state_file: StateFile, directory: Path, entry: dict[str, Any], message: str) -> None:
    """A failed run leaves no file that could pass for a backup, and counts as a failure."""
    with state_file.update() as state:
        current = find_backup(state, entry["name"])
        if current is not None and current["status"] == "complete":
            return  # only an off-site copy failed: already recorded with the backup
        for file_name in entry["files"].values():
            with contextlib.suppress(FileNotFoundError):
                (directory / file_name).unlink()
        with contextlib.suppress(FileNotFoundError):
            (directory / entry["partial"]).unlink()
        now = time.time()
        if current is not None:
            current.update(status="failed", finished=now, error=message, partial=None)
        record = target_record(state, entry["target"])
        record["failures_total"] = record.get("failures_total", 0) + 1
        record["last_run"] = {"started": entry["started"], "finished": now, "success": False,
                              "error": message, "backup": entry["name"]}
