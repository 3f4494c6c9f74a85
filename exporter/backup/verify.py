"""``pgvigil backup verify``: prove a backup is intact and, with ``restore``, that it restores.

Checks, in order, stopping at the first failure:
1. the state lists the backup as complete and its files are there;
2. the dump's sha256 matches the state, the ``.sha256`` file and the manifest;
3. ``pg_restore --list`` reads the archive and it holds data for every table of the manifest;
4. (restore) it restores into a scratch database, every table has exactly the row count the
   manifest recorded, and the sanity query returns a true first value. The scratch database
   is dropped whatever happens.

The restore runs as the role of the DSN it is given, which need not be a superuser (the backup
role of docs/backups.md: pg_read_all_data and CREATEDB). What only a superuser may restore is left
out, each named in the checks: extensions the role may not create (untrusted ones, such as
pg_stat_statements; trusted ones are created, the role owning the scratch database) and event
triggers. Owners, privileges, tablespaces, publications, subscriptions and security labels are
never restored (the scratch database is a check of the data, not a clone of the cluster); a table
that needs a left-out extension (its type, its function as a default) fails the restore, with the
extension named.
The outcome is recorded in the state file (the exporter turns it into metrics).
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg import sql

from exporter.backup.pgclient import BackupError, Conninfo, client_program, tail
from exporter.backup.state import StateFile, backups_of, database_targets, find_backup, target_record
from exporter.files import CHECKSUM_LIMIT, MANIFEST_LIMIT, UnreadableFile, loads_json, open_regular, read_limited
from exporter.logs import loggable

SCRATCH_PREFIX = "pgvigil_verify_"

# What pg_restore leaves out of every test restore: owners and privileges (the roles may not exist where it
# restores), and what belongs to the server rather than the database's data.
RESTORE_FLAGS = ("--no-owner", "--no-acl", "--no-tablespaces", "--no-publications", "--no-subscriptions",
                 "--no-security-labels", "--exit-on-error")

# The extensions the restoring role may create in a database it owns: any, as a superuser; else the trusted
# ones (PostgreSQL 13+), by the default version CREATE EXTENSION installs.
CREATABLE_SQL = """
SELECT e.name, (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
   OR EXISTS (SELECT 1 FROM pg_catalog.pg_available_extension_versions v
              WHERE v.name = e.name AND v.version = e.default_version AND v.trusted)
FROM pg_catalog.pg_available_extensions e
"""

# The restored tables that force row-level security on their owner, named for SQL by the catalog.
FORCED_RLS_SQL = """
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relforcerowsecurity AND c.relkind IN ('r', 'p')
"""

# An archive's table of contents, as pg_restore --list prints it: `id; tableoid oid DESC SCHEMA NAME OWNER`.
_EXTENSION = re.compile(r"^\d+; \d+ \d+ EXTENSION - (?P<name>.+?) ?$")
_CODE = re.compile(r"^\d+; \d+ \d+ (?:FUNCTION|PROCEDURE|AGGREGATE) ", re.MULTILINE)
_EVENT_TRIGGER = re.compile(r"^\d+; \d+ \d+ EVENT TRIGGER - (?P<name>.+) \S*$")

Progress = Callable[[str], None]  # told each long step as it starts


@dataclass
class Verification:
    backup: str
    target: str
    restore: bool
    checks: list[str] = field(default_factory=list)  # what passed, in order, for the user
    notes: list[str] = field(default_factory=list)  # what the checks could not cover (left out of the restore)
    failure: str | None = None
    restore_seconds: float | None = None  # how long restoring and comparing took (restore only)

    @property
    def success(self) -> bool:
        return self.failure is None


def choose_backup(directory: Path, name: str | None, target: str | None) -> dict[str, Any]:
    """The named backup, or the newest complete one (of the target, when given)."""
    state = StateFile(directory).read()
    if name:
        entry = find_backup(state, name)
        if entry is None:
            raise BackupError(f"no backup named {name} in {directory}")
        return entry
    complete = backups_of(state, target=target, status="complete")
    if not complete:
        whose = f" of target {target}" if target else ""
        raise BackupError(f"no complete backup{whose} in {directory}")
    return complete[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:  # a FIFO or /dev/zero in its place is refused, not read forever
        fh = open_regular(path, "backup file")
    except UnreadableFile as exc:
        raise BackupError(str(exc)) from None
    with fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_backup_file(path: Path, limit: int, what: str) -> bytes:
    try:
        return read_limited(path, limit, what)
    except UnreadableFile as exc:
        raise BackupError(str(exc)) from None


def _manifest_problem(manifest: Any) -> str | None:
    """What verify and restore rely on: a mapping, its tables (schema, name, row count), the server version."""
    if not isinstance(manifest, dict):
        return "is not a JSON object"
    tables = manifest.get("tables")
    if not isinstance(tables, list) or not all(
            isinstance(t, dict) and isinstance(t.get("schema"), str) and isinstance(t.get("name"), str)
            and isinstance(t.get("rows"), int) and not isinstance(t.get("rows"), bool) and t["rows"] >= 0
            for t in tables):
        return "has no list of tables with schema, name and a row count"
    version = manifest.get("server_version_num")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        return "has a server_version_num that is not a version number"
    return None


def check_checksums(directory: Path, entry: dict[str, Any]) -> str:
    """Steps 1 and 2 but the manifest: complete, its files there, the sha256 the state and the .sha256
    file recorded; returns it."""
    if entry["status"] != "complete":
        raise BackupError(f"backup {entry['name']} is {entry['status']}, not complete")
    files = {key: directory / value for key, value in entry["files"].items()}
    for key, path in files.items():
        if not path.exists():
            raise BackupError(f"{key} file {path.name} is missing")
    actual = sha256_of(files["dump"])
    if actual != entry["sha256"]:
        raise BackupError(f"checksum mismatch: {files['dump'].name} has sha256 {actual}, "
                          f"the backup recorded {entry['sha256']}")
    recorded = _read_backup_file(files["checksum"], CHECKSUM_LIMIT, "checksum file").decode(errors="replace").split()
    if not recorded or recorded[0] != actual:
        raise BackupError(f"checksum file {files['checksum'].name} does not match the dump")
    return actual


def check_files(directory: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Steps 1 and 2; returns the manifest."""
    actual = check_checksums(directory, entry)
    files = {key: directory / value for key, value in entry["files"].items()}
    text = _read_backup_file(files["manifest"], MANIFEST_LIMIT, "manifest")
    try:
        manifest = loads_json(text)  # bounded nesting, finite numbers only
    except ValueError as exc:
        raise BackupError(f"manifest {files['manifest'].name} is not valid JSON: {exc}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise BackupError(f"manifest {files['manifest'].name} {problem}")
    if manifest.get("sha256") != actual:
        raise BackupError(f"manifest {files['manifest'].name} describes another dump (sha256 differs)")
    return manifest


def check_archive(dump: Path, manifest: dict[str, Any]) -> int:
    """Step 3: pg_restore can read the table of contents and it has data for every table."""
    pg_restore = client_program("pg_restore", manifest.get("server_version_num"))
    proc = subprocess.run([pg_restore, "--list", str(dump)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackupError(f"pg_restore --list cannot read {dump.name}: {tail(proc.stderr)}")
    listed = {line for line in proc.stdout.splitlines() if " TABLE DATA " in line}
    for table in manifest["tables"]:
        needle = f" TABLE DATA {listed_name(table['schema'])} {listed_name(table['name'])} "
        if not any(needle in line for line in listed):
            raise BackupError(f"the archive has no data entry for table "
                              f"{loggable(table['schema'])}.{loggable(table['name'])}")
    return len(listed)


def listed_name(name: str) -> str:
    """A name as pg_restore --list prints it: its line breaks as spaces (sanitize_line), so that no name, a
    tenant's, ever starts a line of the list."""
    return name.replace("\r", " ").replace("\n", " ")


def _drop_database(conninfo: Conninfo, name: str) -> None:
    conn = conninfo.connect(application_name="pgvigil verify")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            # Anything still connected (a hung pg_restore) would block the drop.
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def restore_and_compare(conninfo: Conninfo, dump: Path, manifest: dict[str, Any], sanity_query: str | None,
                        progress: Progress = lambda step: None, notes: list[str] | None = None) -> list[str]:
    """Step 4: restore into a scratch database on conninfo's server, compare, always drop it; what the
    restore left out is added to `notes`."""
    scratch = SCRATCH_PREFIX + uuid.uuid4().hex[:12]
    conn = conninfo.connect(application_name="pgvigil verify")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch)))
    except psycopg.Error as exc:
        raise BackupError(f"cannot create the scratch database {scratch}: {str(exc).strip()}") from None
    finally:
        conn.close()
    try:
        return _restore_into(conninfo, scratch, dump, manifest, sanity_query, progress,
                             notes if notes is not None else [])
    finally:
        _drop_database(conninfo, scratch)


# A restore runs the archive's own functions (index expressions, check constraints: an IMMUTABLE function may
# sleep, PostgreSQL takes its owner's word), so a database's owner could hold pg_restore, and verify with every
# backup after it, for ever. Bounded by this many times the dump's own duration, and at least this long.
RESTORE_DUMP_FACTOR = 20
RESTORE_MIN_SECONDS = 1800
_LONGEST_DUMP_SECONDS = 7 * 86400  # beyond this, the manifest's times are not believed


def restore_deadline(manifest: dict[str, Any]) -> float:
    """Seconds pg_restore may take for this backup (the manifest's times are a file's: anything odd counts 0)."""
    try:
        took = float(manifest.get("finished_epoch", 0)) - float(manifest.get("started_epoch", 0))
    except (TypeError, ValueError, OverflowError):
        took = 0.0
    if not 0 <= took <= _LONGEST_DUMP_SECONDS:  # NaN too
        took = 0.0
    return max(float(RESTORE_MIN_SECONDS), RESTORE_DUMP_FACTOR * took)


def restore_list(toc: str, available: dict[str, bool], superuser: bool) -> tuple[str, list[str]]:
    """The archive's table of contents for pg_restore --use-list, with what the role may not restore
    commented out (extensions absent from the server or that it may not create, and their comments; event
    triggers unless a superuser), and a line for each thing left out. `available`: the server's extensions,
    whether the role may create each."""
    lines, left_out, skipped = [], [], set()
    for line in toc.splitlines():
        extension = _EXTENSION.match(line)
        trigger = _EVENT_TRIGGER.match(line)
        if extension and not available.get(extension["name"]):
            name = extension["name"]
            skipped.add(name)
            why = ("only a superuser may create it (an untrusted extension)" if name in available
                   else "it is not installed on the server restored to")
            left_out.append(f"extension {name} not restored: {why}; its objects are not checked")
        elif trigger and not superuser:
            left_out.append(f"event trigger {trigger['name']} not restored: only a superuser may create one")
        elif not any(line.endswith(f" COMMENT - EXTENSION {name} ") or line.endswith(f" COMMENT - EXTENSION {name}")
                     for name in skipped):
            lines.append(line)
            continue
        lines.append(";" + line)
    return "\n".join(lines) + "\n", left_out


def superuser_restore_note(toc: str, superuser: bool, role: str) -> list[str]:
    """A restore runs the database's own functions (in check constraints while the rows load, in index
    expressions while the indexes build) as the restoring role: with a superuser's privileges, so a
    database's owner could make its functions do anything. Said whenever that happened."""
    functions = len(_CODE.findall(toc))
    if not superuser or not functions:
        return []
    return [f"restored as superuser {role}: the archive's {functions} functions, procedures and aggregates "
            "could run with every privilege (check constraints, index expressions); verify a database whose "
            "owner you do not trust as a role that is not a superuser (docs/backups.md)"]


def restore_error(stderr: str) -> str:
    """pg_restore's first error with its detail, hint and the first line of its command (a view's
    definition runs over many lines, which would bury the message), else its last lines."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "error:" in line), None)
    if start is None:
        return tail(stderr)
    return "\n".join([lines[start], *(line for line in lines[start + 1:start + 8]
                                      if line.startswith(("DETAIL:", "HINT:", "Command was:")))])


def _restore_into(conninfo: Conninfo, scratch: str, dump: Path, manifest: dict[str, Any],
                  sanity_query: str | None, progress: Progress, notes: list[str]) -> list[str]:
    passed = []
    # The pg_restore closest to the dumped server's version: a newer one emits settings an older server
    # rejects (pg_restore 17+ sets transaction_timeout).
    pg_restore = client_program("pg_restore", manifest.get("server_version_num"))
    listed = subprocess.run([pg_restore, "--list", str(dump)], capture_output=True, text=True)
    if listed.returncode != 0:
        raise BackupError(f"pg_restore --list cannot read {dump.name}: {tail(listed.stderr)}")
    conn = conninfo.connect(dbname=scratch, application_name="pgvigil verify")
    try:
        with conn.cursor() as cur:
            cur.execute(CREATABLE_SQL)
            available = {name: bool(creatable) for name, creatable in cur.fetchall()}
            cur.execute("SELECT rolsuper, current_user FROM pg_catalog.pg_roles WHERE rolname = current_user")
            superuser, role = cur.fetchall()[0]
    except psycopg.Error as exc:
        raise BackupError(f"cannot read what the restoring role may create: {str(exc).strip()}") from None
    finally:
        conn.close()
    toc, left_out = restore_list(listed.stdout, available, superuser)
    progress(f"restoring {dump.stat().st_size / 1048576:.1f} MiB into scratch database {scratch} (pg_restore)")
    with tempfile.TemporaryDirectory(prefix="pgvigil-verify-") as scratch_dir:
        list_file = Path(scratch_dir) / "restore.list"
        list_file.write_text(toc)
        argv = [pg_restore, *RESTORE_FLAGS, f"--use-list={list_file}",
                f"--dbname={conninfo.without_password(dbname=scratch)}", str(dump)]
        deadline = restore_deadline(manifest)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=conninfo.child_env(), timeout=deadline)
        except subprocess.TimeoutExpired:  # run() has killed pg_restore; the scratch database is dropped next
            raise BackupError(f"pg_restore did not finish within {deadline:.0f} s ({RESTORE_DUMP_FACTOR} times the "
                              f"dump's own duration, at least {RESTORE_MIN_SECONDS} s): a function of the archive "
                              "(an index expression, a check constraint) may run for ever as it restores") from None
    if proc.returncode != 0:
        why = f"pg_restore into {scratch} failed: {restore_error(proc.stderr)}"
        if left_out:
            why += (f" (left out because role {role} may not restore them: "
                    f"{'; '.join(item.split(' not restored')[0] for item in left_out)}; restore as a role that "
                    "may, e.g. verify --restore --dsn of a staging server's superuser)")
        raise BackupError(conninfo.redact(why))
    notes += left_out + superuser_restore_note(listed.stdout, superuser, role)
    passed.append(f"restored into scratch database {scratch}")
    conn = conninfo.connect(dbname=scratch, application_name="pgvigil verify")
    try:
        with conn.cursor() as cur:
            # Counted with row_security off (pgclient.py), as pg_dump read them: the restoring role owns every
            # table it restored, and a table that FORCEs row-level security would fail the count. This copy is
            # ours, dropped after: its tables stop forcing it, so no policy, nor a function of it, ever runs.
            cur.execute(FORCED_RLS_SQL)
            for (forced,) in cur.fetchall():
                cur.execute(f"ALTER TABLE {forced} NO FORCE ROW LEVEL SECURITY")
            progress(f"comparing the row counts of {len(manifest['tables'])} tables with the manifest")
            for table in manifest["tables"]:
                cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                    sql.Identifier(table["schema"]), sql.Identifier(table["name"])))
                restored = cur.fetchall()[0][0]
                if restored != table["rows"]:
                    raise BackupError(f"row count mismatch in {loggable(table['schema'])}.{loggable(table['name'])}: "
                                      f"restored {restored}, the manifest recorded {table['rows']}")
            passed.append(f"row counts match the manifest for {len(manifest['tables'])} tables")
            if sanity_query:
                passed.append(_run_sanity_query(cur, sanity_query))
    except psycopg.Error as exc:
        raise BackupError(f"querying the restored database failed: {str(exc).strip()}") from None
    finally:
        conn.close()
    return passed


def _run_sanity_query(cur: Any, query: str) -> str:
    """The user's own assertion about the data, e.g. 'SELECT count(*) > 0 FROM users': it names the
    user's tables as a fresh database's default search_path finds them (pg_catalog first)."""
    try:
        cur.execute("SET search_path = pg_catalog, \"$user\", public")
        cur.execute(query)
        cur.set_result(-1)  # of several statements, the last one's answer counts
        row = cur.fetchone() if cur.description else None
    except psycopg.Error as exc:
        raise BackupError(f"sanity query failed: {str(exc).strip()}") from None
    if row is None or row[0] in (None, False, 0):
        raise BackupError(f"sanity query returned {row[0] if row else 'no row'!r}, expected a true value")
    return f"sanity query returned {row[0]!r}"


def check_globals(path: Path) -> str:
    """A globals backup is pg_dumpall's whole output: its first and last comment lines are there."""
    with path.open("rb") as fh:
        head = fh.read(4096)
        fh.seek(max(0, path.stat().st_size - 4096))
        end = fh.read()
    if b"-- PostgreSQL database cluster dump\n" not in head:
        raise BackupError(f"{path.name} does not start as pg_dumpall's output does")
    if b"-- PostgreSQL database cluster dump complete" not in end:
        raise BackupError(f"{path.name} is not complete: pg_dumpall's closing line is missing")
    roles = sum(1 for line in path.read_bytes().splitlines() if line.startswith(b"CREATE ROLE "))
    return f"pg_dumpall output, complete ({roles} roles)"


GLOBALS_NOT_RESTORED = ("the globals are not test-restored: roles and tablespaces belong to the whole server, "
                        "a scratch database cannot hold them")


def verify_backup(directory: Path, name: str | None = None, target: str | None = None,
                  restore: bool = False, dsn: str | None = None,
                  sanity_query: str | None = None, progress: Progress = lambda step: None) -> Verification:
    """Run the checks on one backup and record the outcome in the state file; `progress` hears each
    long step as it starts (a restore of a large backup takes minutes)."""
    directory = Path(directory)
    entry = choose_backup(directory, name, target)
    if restore and not dsn:
        raise BackupError("--restore needs a server to restore into: give --dsn or a --config with the target")
    conninfo = Conninfo.parse(dsn) if dsn else None
    if entry.get("kind") == "globals":
        result = Verification(backup=entry["name"], target=entry["target"], restore=False)
        try:
            result.checks.append(f"sha256 {check_checksums(directory, entry)[:16]}... matches")
            result.checks.append(check_globals(directory / entry["files"]["dump"]))
            if restore:
                result.notes.append(GLOBALS_NOT_RESTORED)
        except BackupError as exc:
            result.failure = str(exc)
        record_verification(directory, result)
        return result
    result = Verification(backup=entry["name"], target=entry["target"], restore=restore)
    try:
        progress(f"checking the files of {entry['name']} (sha256)")
        manifest = check_files(directory, entry)
        result.checks.append(f"sha256 {entry['sha256'][:16]}... matches")
        count = check_archive(directory / entry["files"]["dump"], manifest)
        result.checks.append(f"pg_restore --list reads the archive ({count} table data entries)")
        if restore and conninfo is not None:
            started = time.monotonic()
            result.checks.extend(restore_and_compare(conninfo, directory / entry["files"]["dump"], manifest,
                                                     sanity_query, progress, result.notes))
            # the recovery time a real restore of this backup would need: the RTO objective reads it
            result.restore_seconds = time.monotonic() - started
    except BackupError as exc:
        result.failure = conninfo.redact(str(exc)) if conninfo else str(exc)
    record_verification(directory, result)
    return result


def record_verification(directory: Path, result: Verification) -> None:
    outcome = {"at": time.time(), "success": result.success, "restore": result.restore,
               "backup": result.backup, "message": result.failure or "; ".join(result.checks + result.notes)}
    with StateFile(directory).update() as state:
        entry = find_backup(state, result.backup)
        if entry is not None:
            entry["verify"] = outcome
        record = target_record(state, result.target)
        record["last_verify"] = outcome
        if result.restore_seconds is not None:
            record["last_restore"] = {"at": outcome["at"], "duration_seconds": result.restore_seconds,
                                      "backup": result.backup}



def verify_cluster(directory: Path, target: str, restore: bool = False, dsn: str | None = None,
                   sanity_query: str | None = None, home: str | None = None,
                   progress: Progress = lambda step: None) -> list[Verification]:
    """A `databases:` target's backups: the newest of each database its latest run listed, then the newest
    globals backup; each checked (restored, with `restore`) and recorded as verify_backup does. The sanity
    query runs in the restore of the `home` database (the DSN's) only: other databases have other tables.
    A database without a complete backup is a failed verification here (not recorded: nothing was checked)."""
    directory = Path(directory)
    state = StateFile(directory).read()
    targets = database_targets(state, target)
    globals_backups = [b for b in backups_of(state, target=target, status="complete") if b.get("kind") == "globals"]
    if not targets and not globals_backups:
        raise BackupError(f"no complete backup of target {target} in {directory}")
    results = []
    for name in targets:
        complete = backups_of(state, target=name, status="complete")
        if not complete:
            last = (state["targets"].get(name) or {}).get("last_run") or {}
            why = f": its last run failed: {last['error']}" if last.get("error") else ""
            results.append(Verification(backup=f"(none of {name})", target=name, restore=restore,
                                        failure=f"no complete backup of {name}{why}"))
            continue
        query = sanity_query if name == f"{target}/{home}" else None
        results.append(verify_backup(directory, name=complete[0]["name"], restore=restore, dsn=dsn,
                                     sanity_query=query, progress=progress))
    if globals_backups:
        results.append(verify_backup(directory, name=globals_backups[0]["name"], restore=restore, dsn=dsn,
                                     progress=progress))
    else:
        results.append(Verification(backup=f"(none of {target}'s globals)", target=target, restore=False,
                                    failure=f"no complete backup of {target}'s globals (roles, tablespaces)"))
    return results
