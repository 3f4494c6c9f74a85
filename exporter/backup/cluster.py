"""``pgvigil backup run`` for a `databases:` target: every database it names, and the cluster's globals.

A target with `databases:` watches a whole server from one DSN (docs/discovery.md); backing up only the
DSN's database would be a green backup of the wrong thing. So each database the patterns name is a
backup of its own, target `<target>/<datname>`, made, checked and recorded exactly as a one-database
backup (dump.py), and the roles and tablespaces, which no pg_dump holds, are dumped by
`pg_dumpall --globals-only` into `<target>-globals-<time>.sql`, recorded under the target itself.

The databases are chosen as discovery chooses the ones it monitors: the `databases` and
`exclude_databases` patterns, templates and databases that do not allow connections left out (each
said in the run's output). Unlike discovery, a database the patterns name but the role may not
CONNECT to, or whose name is not UTF-8, is a failed backup of that database, never a silent skip.
The target's record lists the databases of its latest run: the exporter's backup metrics follow that
list, so a dropped database's series end with the next run and a new one's begin.

The globals: without a superuser's or pg_read_all_data's right to read pg_authid, pg_dumpall is run
again with --no-role-passwords, and the backup says the passwords are not in it; a role that may not
dump them at all fails the globals backup, naming what it lacks.
"""
from __future__ import annotations

import fnmatch
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import psycopg
from psycopg.conninfo import make_conninfo

from exporter.backup.dump import Progress, finish_run, record_refusal, recorded_run, run_backup, stream_program
from exporter.backup.pgclient import BackupError, Conninfo, client_program
from exporter.backup.state import StateFile, target_record
from exporter.logs import loggable

# Names as their bytes, as discovery reads them: one name that is not UTF-8 costs that database alone.
DATABASES_SQL = (r"SELECT pg_catalog.decode(pg_catalog.replace(datname::pg_catalog.text, E'\\', E'\\\\'), 'escape'),"
                 " datistemplate, datallowconn, pg_catalog.has_database_privilege(oid, 'CONNECT')"
                 " FROM pg_catalog.pg_database ORDER BY 1")
FACTS_SQL = "SELECT current_user, current_setting('server_version_num')::int, current_database()"


@dataclass
class Outcome:
    """One backup of the run: its state entry, or why it failed."""

    target: str
    entry: dict[str, Any] | None = None
    error: str | None = None
    note: str | None = None


@dataclass
class ClusterRun:
    target: str
    databases: list[Outcome] = field(default_factory=list)
    globals: Outcome | None = None
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (database, why), not meant to be backed up

    @property
    def outcomes(self) -> list[Outcome]:
        return self.databases + ([self.globals] if self.globals else [])

    @property
    def success(self) -> bool:
        return all(outcome.error is None for outcome in self.outcomes)


@dataclass(frozen=True)
class Databases:
    """What the server holds, sorted: the databases to back up, those the role may not connect to, those whose
    name is not UTF-8 (escaped), and those left out by design, with why."""

    wanted: list[str]
    no_connect: list[str]
    undecodable: list[str]
    left_out: list[tuple[str, str]]


def choose(rows: Sequence[Sequence[Any]], include: Sequence[str], exclude: Sequence[str]) -> Databases:
    """The databases the patterns name, from (name as bytes, datistemplate, datallowconn, may_connect) rows."""
    wanted: list[str] = []
    no_connect: list[str] = []
    undecodable: list[str] = []
    left_out: list[tuple[str, str]] = []
    for raw, is_template, allows_connections, may_connect in rows:
        raw = bytes(raw) if not isinstance(raw, str) else raw.encode()
        shown = raw.decode("utf-8", "surrogateescape")  # patterns match a name that is not UTF-8 by its bytes
        if not any(fnmatch.fnmatchcase(shown, p) for p in include) or any(
                fnmatch.fnmatchcase(shown, p) for p in exclude):
            left_out.append((loggable(shown), "excluded by the target's databases/exclude_databases"))
        elif is_template:
            left_out.append((loggable(shown), "a template"))
        elif not allows_connections:
            left_out.append((loggable(shown), "does not allow connections (datallowconn = false)"))
        else:
            try:
                datname = raw.decode("utf-8")
            except UnicodeDecodeError:
                undecodable.append(loggable(shown))
                continue
            (wanted if may_connect else no_connect).append(datname)
    return Databases(wanted, no_connect, undecodable, left_out)


def list_databases(conninfo: Conninfo, include: Sequence[str], exclude: Sequence[str]) -> tuple[Databases, str, int]:
    """The server's databases as `choose` sorts them, the role, and the server's version."""
    conn = conninfo.connect(application_name="pgvigil backup")
    try:
        with conn.cursor() as cur:
            cur.execute(FACTS_SQL)
            role, version_num, _ = cur.fetchall()[0]
            cur.execute(DATABASES_SQL)
            rows = cur.fetchall()
    except psycopg.Error as exc:
        raise BackupError(conninfo.redact(f"cannot list the databases: {str(exc).strip()}")) from None
    finally:
        conn.close()
    return choose(rows, include, exclude), role, version_num


def run_cluster_backup(dsn: str, target: str, include: Sequence[str], exclude: Sequence[str], directory: Path,
                       progress: bool | None = None, offsite: Sequence[Any] = (), stream: Any = None) -> ClusterRun:
    """Back up every database of a `databases:` target, each on its own, then the globals. Raises BackupError
    only when the server cannot be asked for its databases; each backup's failure is in its outcome."""
    directory = Path(directory)
    conninfo = Conninfo.parse(dsn)
    client_program("pg_dump")  # fail before recording anything when the binaries are missing
    client_program("pg_dumpall")
    found, role, version_num = list_databases(conninfo, include, exclude)
    run = ClusterRun(target, left_out=found.left_out)
    listed = sorted([*found.wanted, *found.no_connect, *found.undecodable])
    with StateFile(directory).update() as state:
        target_record(state, target)["databases"] = listed
    for datname in listed:
        name = f"{target}/{datname}"
        if datname in found.no_connect:
            message = (f"role {role} may not connect to database {loggable(datname)}: GRANT CONNECT ON DATABASE "
                       f"... TO {role}, or leave it out with exclude_databases")
            record_refusal(directory, name, message)
            run.databases.append(Outcome(name, error=message))
        elif datname in found.undecodable:
            message = (f"database {datname}: its name is not UTF-8, which pgvigil cannot connect with "
                       "(rename it, or leave it out with exclude_databases)")
            record_refusal(directory, name, message)
            run.databases.append(Outcome(name, error=message))
        else:
            try:
                entry = run_backup(make_conninfo(dsn, dbname=datname), name, directory, progress, offsite, stream)
                run.databases.append(Outcome(name, entry))
            except BackupError as exc:
                run.databases.append(Outcome(name, getattr(exc, "entry", None), error=str(exc)))
    run.globals = run_globals(conninfo, dsn, target, directory, version_num, role, offsite)
    return run


def globals_files(name: str) -> dict[str, str]:
    return {"dump": f"{name}.sql", "checksum": f"{name}.sql.sha256"}


def run_globals(conninfo: Conninfo, dsn: str, target: str, directory: Path, version_num: int, role: str,
                offsite: Sequence[Any] = ()) -> Outcome:
    """pg_dumpall --globals-only, recorded under the target itself; without the passwords when the role
    may not read them, said so."""
    outcome = Outcome(target)
    pg_dumpall = client_program("pg_dumpall", version_num)
    # --database: the first connection goes to the DSN's database, not to postgres or template1
    argv = [pg_dumpall, "--globals-only", f"--dbname={conninfo.without_password()}",
            f"--database={conninfo.params.get('dbname') or conninfo.dbname}"]

    def make(conninfo: Conninfo, entry: dict[str, Any]) -> dict[str, Any]:
        partial = directory / entry["partial"]
        meter = Progress(sys.stderr, 0, False)
        size, sha256, error = stream_program(argv, conninfo, partial, meter)
        if error and "pg_authid" in error:  # the passwords are a superuser's (or pg_read_all_data's) to read
            size, sha256, error = stream_program([*argv, "--no-role-passwords"], conninfo, partial, meter)
            if not error:
                outcome.note = entry["note"] = (f"role passwords not included: role {role} may not read pg_authid "
                                                "(a superuser or pg_read_all_data may); set them again after a "
                                                "restore")
        if error:
            raise BackupError(f"the globals (roles, tablespaces) are not backed up: {error}; run the backup as a "
                              "role that may read them (pg_read_all_data, or a superuser)")
        return finish_run(directory, target, entry, size, sha256, time.time(), offsite)

    try:
        outcome.entry = recorded_run(dsn, target, directory, f"{target}-globals", globals_files, "globals", make)
    except BackupError as exc:
        outcome.entry = getattr(exc, "entry", None)
        outcome.error = str(exc)
    return outcome
