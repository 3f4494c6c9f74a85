"""A hostile tenant's or a broken environment's input: nothing it writes may forge a count or stop the reader."""
from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from pathlib import Path

import psycopg
import pytest
from logsupport import Recorder, csv_record
from pglogs import logging_cluster
from psycopg.conninfo import conninfo_to_dict

from exporter.config import parse_config
from exporter.serverlog import classify, csvlog, jsonlog, positions, stderr
from exporter.serverlog.collector import LogFollower
from exporter.serverlog.counters import LogCounters
from exporter.serverlog.link import ServerLink
from exporter.serverlog.reader import LogReader
from exporter.serverlog.source import FileSource, LogFile, SourceError, SqlSource


def follow(logs: Path, state: Path | None) -> tuple[LogReader, Recorder]:
    sink = Recorder()
    return LogReader(FileSource(logs), "csvlog", csvlog.parse, sink, LogCounters(), positions.load(state)), sink


@pytest.fixture(scope="module")
def csv_cluster():
    pg = logging_cluster("csvlog")
    try:
        yield pg
    finally:
        pg.cleanup()


def test_a_long_statement_cannot_forge_csv_records(csv_cluster):
    """A statement over the csv module's 128 Ki field limit, holding a line shaped as a csvlog record:
    the server quotes it in the error's `query` column; it must stay one ERROR, never a PANIC."""
    forged = ("2026-12-07 12:00:00.000 UTC,alice,postgres,1,127.0.0.1:5,a,1,x,2026-12-07 12:00:00 UTC,1/1,0,"
              "PANIC,XX000,forged,,,,,,,,,,,,")
    with psycopg.connect(csv_cluster.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0; /*" + "x" * 140_000 + "\n" + forged + "\n*/")
    logdir = csv_cluster.datadir / "log"
    deadline = time.monotonic() + 10
    while True:
        data = b"".join(f.read_bytes() for f in sorted(logdir.glob("*.csv")))
        if b"forged" in data or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    seen: list[tuple[str, str]] = []
    parsed = csvlog.parse(data, lambda severity, code, user, db, message, client: seen.append((severity, message)))
    assert parsed.errors == 0
    assert [s for s in seen if s[0] != "LOG"] == [("ERROR", "division by zero")]


@pytest.mark.parametrize("offset", ["-5", "1e400", "2.5", '"12"'])
def test_a_state_file_with_a_bad_offset_starts_at_the_end_instead_of_failing_every_cycle(tmp_path, offset):
    logs, state = tmp_path / "log", tmp_path / "state.json"
    logs.mkdir()
    (logs / "a.csv").write_bytes(csv_record("history"))
    info = (logs / "a.csv").stat()
    state.write_text('{"version": 1, "files": {"%d:%d": {"name": "a.csv", "offset": %s}}}'
                     % (info.st_dev, info.st_ino, offset))
    read, sink = follow(logs, state)
    read.cycle(1 << 20)  # neither a seek before the start nor an exception while loading
    with open(logs / "a.csv", "ab") as fh:
        fh.write(csv_record("new"))
    read.cycle(1 << 20)
    assert [e[4] for e in sink.entries] == ["new"]


def test_a_deeply_nested_state_file_is_no_state(tmp_path):
    state = tmp_path / "state.json"
    state.write_text('{"version": 1, "files": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert positions.load(state) is None


def test_saving_never_writes_through_a_planted_temporary_symlink(tmp_path):
    victim, state = tmp_path / "victim", tmp_path / "state.json"
    victim.write_text("precious")
    (tmp_path / "state.json.tmp").symlink_to(victim)
    assert positions.save(state, {"1:2": positions.Position("a.csv", 10, b"head")})
    assert victim.read_text() == "precious"
    assert state.stat().st_mode & 0o777 == 0o600  # its first bytes of each log file are the log's to protect
    assert positions.load(state) == {"1:2": positions.Position("a.csv", 10, saved_head=(4, positions.digest(b"head")))}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.tmp", "victim"]


def test_two_writers_of_one_state_file_never_leave_it_corrupt(tmp_path):
    state = tmp_path / "state.json"
    many = {f"1:{i}": positions.Position(f"f{i}.csv", i, b"x" * 64) for i in range(2000)}
    few = {"1:1": positions.Position("a.csv", 1)}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for _ in range(30):
            list(pool.map(lambda p: positions.save(state, p), (many, few)))
            assert [(p.name, p.offset) for p in (positions.load(state) or {}).values()] in (
                [(p.name, p.offset) for p in many.values()], [(p.name, p.offset) for p in few.values()])


def test_an_unwritable_state_directory_is_a_warning(tmp_path, caplog):
    assert not positions.save(tmp_path / "absent" / "state.json", {})
    assert "not written" in caplog.text


@pytest.mark.parametrize("size", [100_000, 5 * 1024 * 1024])
def test_an_entry_larger_than_the_budget_does_not_stop_the_reading(tmp_path, size):
    """A client's long statement logged in one entry, with the smallest budget (64KiB): it used to be
    'read next cycle' forever, and nothing after it was ever counted."""
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "a.csv").write_bytes(b"")
    read, sink = follow(logs, None)
    read.cycle(64 * 1024)
    with open(logs / "a.csv", "ab") as fh:
        fh.write(csv_record("before") + csv_record("x" * size) + csv_record("after"))
    for _ in range(200):
        read.cycle(64 * 1024)
        if sink.entries and sink.entries[-1][4] == "after":
            break
    names = [e[4] if len(e[4]) < 20 else "long" for e in sink.entries]
    assert names == (["before", "long", "after"] if size < 1024 * 1024 else ["before", "after"])
    assert read.counters.backlog_bytes == 0


@pytest.mark.parametrize(("prefix", "expected"), [("%m [%p] %q%u@%d ", True), ("%m [%p] %-10d ", True),
                                                  ("%m [%p] %e ", False), ("%m 100%%u ", False)])
def test_prefixes_that_print_a_clients_names_raw(prefix, expected):
    assert stderr.forgeable(prefix) is expected


def test_stderr_with_names_in_the_prefix_is_warned_about(tmp_path, caplog):
    """A client's user name with a newline starts a line of its own in the stderr log (shown here on a real
    server): pgvigil cannot tell it apart, so it says so when it reads such a log."""
    pg = logging_cluster("stderr")
    try:
        dsn = conninfo_to_dict(pg.dsn())
        dsn.update(user="x\n2026-12-07 12:00:00.000 UTC [1] PANIC:  forged", password="nope", host="127.0.0.1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**dsn, connect_timeout=5).close()
        logs = pg.datadir / "log"
        deadline = time.monotonic() + 10
        while b"forged" not in b"".join(f.read_bytes() for f in logs.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b"\n2026-12-07 12:00:00.000 UTC [1] PANIC:  forged" in b"".join(f.read_bytes() for f in logs.iterdir())
        config = parse_config(f"collectors: []\ntargets:\n  db:\n    dsn: '{pg.dsn()}'\n"
                              f"    log: {{source: file, path: {logs}}}\n")
        follower = LogFollower(config.targets[0], config.targets[0].log)
        try:
            follower.cycle()
        finally:
            follower.link.close()
        assert follower.counters.readable is None
        assert "lets any client forge log lines" in caplog.text
    finally:
        pg.cleanup()


def test_a_fifo_in_place_of_a_listed_file_does_not_block_the_reader(tmp_path):
    """The file was replaced by a FIFO between the listing and the read (a broken or hostile log directory):
    opening it used to block the reader thread forever."""
    fifo = tmp_path / "a.csv"
    os.mkfifo(fifo)
    info = fifo.stat()
    listed = LogFile("a.csv", f"{info.st_dev}:{info.st_ino}", 100, 0.0)
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_read_or_reason(FileSource(tmp_path), listed)),
                              daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the open so the thread ends
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        worker.join(5)
        raise AssertionError("the read blocked on a FIFO")
    assert outcome == ["deleted"]


def _read_or_reason(source: FileSource, file: LogFile) -> object:
    try:
        return source.read(file, 0, 100)
    except SourceError as exc:
        return exc.reason


def test_a_file_removed_after_the_sql_listing_is_a_deletion_not_an_unreadable_log(csv_cluster):
    link = ServerLink(csv_cluster.dsn())
    try:
        source = SqlSource(link, "log")
        assert source.files("csvlog")
        with pytest.raises(SourceError) as raised:
            source.read(LogFile("removed-since.csv", "removed-since.csv", 100, 0.0), 0, 100)
        assert raised.value.reason == "deleted"
    finally:
        link.close()


def test_a_deeply_nested_jsonlog_line_is_one_parse_error(tmp_path):
    """Raised out of the parser, it failed the chunk at every cycle: nothing after it was ever read."""
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "a.json").write_bytes(b"")
    sink, counters = Recorder(), LogCounters()
    read = LogReader(FileSource(logs), "jsonlog", jsonlog.parse, sink, counters, None)
    read.cycle(1 << 20)
    with open(logs / "a.json", "ab") as fh:
        fh.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
        fh.write(b'{"error_severity": "ERROR", "message": "after", "state_code": "22P02"}\n')
    read.cycle(1 << 20)
    assert [e[4] for e in sink.entries] == ["after"] and counters.parse_errors == 1


def test_a_clients_own_sqlstates_do_not_blind_the_counters(csv_cluster):
    """101 codes raised by a client fill the exact SQLSTATE labels; a statement timeout after them is still
    counted as one (it was labelled 57000 and not counted)."""
    start = sum(f.stat().st_size for f in (csv_cluster.datadir / "log").glob("*.csv"))
    with psycopg.connect(csv_cluster.dsn(), autocommit=True) as conn:
        for i in range(classify.MAX_EXACT_CODES + 1):
            with pytest.raises(psycopg.Error):
                conn.execute(f"DO $$BEGIN RAISE EXCEPTION 'mine' USING ERRCODE = 'Q{i:04d}'; END$$")
        conn.execute("SET statement_timeout = '50ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
    logdir = csv_cluster.datadir / "log"
    deadline = time.monotonic() + 10
    while True:
        data = b"".join(f.read_bytes() for f in sorted(logdir.glob("*.csv")))[start:]
        if b"statement timeout" in data or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    counters = LogCounters()
    csvlog.parse(data, classify.Classifier(counters))
    assert counters.by_kind["cancellations"].values == {("statement_timeout",): 1.0}
    assert counters.messages.values[("ERROR", "57000")] == 1  # the label folds; the counter does not


def test_lines_without_a_severity_do_not_backtrack_through_many_name_escapes():
    """lc_messages not English: no line matches. With five free-text escapes each line took ~1 s to fail
    (under the counters' lock, so scrapes waited)."""
    parser = stderr.StderrParser("%t %u %d %a %i %b ")
    line = "2026-12-07 12:00:00 UTC alice app psql SELECT client backend FEHLER:  " + "a " * 60 + "\n"
    english = "2026-12-07 12:00:00 UTC alice app psql SELECT client backend ERROR:  division by zero\n"
    seen: list[str] = []
    started = time.process_time()
    parsed = parser.parse((line * 10 + english).encode(), lambda *entry: seen.append(entry[4]))
    assert time.process_time() - started < 1.0
    assert parsed.errors == 10 and seen == ["division by zero"]


def test_the_state_of_a_directory_of_many_files_is_loaded_again(tmp_path):
    state = tmp_path / "state.json"
    many = {f"65024:{1_000_000 + i}": positions.Position(f"postgresql-2026-12-07_{i:06d}.csv", 123_456_789, b"2" * 64)
            for i in range(20_000)}
    assert positions.save(state, many) and state.stat().st_size > 1024 * 1024
    assert [(p.name, p.offset, p.saved_head) for p in (positions.load(state) or {}).values()] == [
        (p.name, p.offset, (64, positions.digest(b"2" * 64))) for p in many.values()]


def test_the_state_file_keeps_no_text_of_the_log(tmp_path):
    """A csvlog file's first bytes hold its first entry's user name: a password typed as one must not be
    copied out of the log (in hex, as it was). A reused inode is still told apart after a restart."""
    logs, state = tmp_path / "log", tmp_path / "state.json"
    logs.mkdir()
    (logs / "a.csv").write_bytes(b"")
    read, _ = follow(logs, state)
    read.cycle(1 << 20)
    with open(logs / "a.csv", "ab") as fh:
        fh.write(csv_record("password authentication failed", "FATAL", "28P01", user="Hunter2-Secret"))
    read.cycle(1 << 20)
    assert read.positions is not None and positions.save(state, read.positions)
    text = state.read_text()
    assert "Hunter2" not in text and b"Hunter2".hex() not in text
    with open(logs / "a.csv", "r+b") as fh:  # the same inode, other first bytes: a new file
        fh.write(csv_record("new", user="bob"))
    again, sink = follow(logs, state)
    again.cycle(1 << 20)
    assert [e[4] for e in sink.entries][:1] == ["new"]


def test_a_role_and_a_database_named_in_bytes_that_are_not_utf8_do_not_stop_the_reading(cluster):
    """A tenant with CREATEROLE or CREATEDB in a SQL_ASCII database may name them in any bytes: the
    names the reader loads (for failed logins' labels) are read as bytes, not refused by the driver."""
    ascii_db, role, database = "serverlog_ascii", b'"slr\xff\xfe"', b'"sld\xff\xfe"'
    cluster.execute(f"DROP DATABASE IF EXISTS {ascii_db}")
    cluster.execute(f"CREATE DATABASE {ascii_db} TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
    admin = psycopg.connect(cluster.dsn(ascii_db), autocommit=True)
    admin.execute("SET pg_stat_statements.track = 'none'")  # its texts would not be UTF-8 (test_sampler_postgres)
    link = ServerLink(cluster.dsn("postgres"))
    try:
        admin.execute(b"CREATE ROLE " + role)
        admin.execute(b"CREATE DATABASE " + database + b" TEMPLATE template0 ENCODING 'SQL_ASCII'"
                      b" LC_COLLATE 'C' LC_CTYPE 'C'")
        roles, databases = link.names()
        assert "slr\ufffd\ufffd" in roles and "postgres" in roles
        assert "sld\ufffd\ufffd" in databases and "postgres" in databases
    finally:
        link.close()
        admin.execute(b"DROP DATABASE IF EXISTS " + database)
        admin.execute(b"DROP ROLE IF EXISTS " + role)
        admin.close()
        cluster.execute(f"DROP DATABASE IF EXISTS {ascii_db}")


TRAPS = """
CREATE SCHEMA trap;
CREATE FUNCTION trap.boom(text, text) RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'a tenant''s look-alike was called'; END $$;
CREATE FUNCTION trap.boom(float8) RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'a tenant''s look-alike was called'; END $$;
CREATE OPERATOR trap.= (LEFTARG = text, RIGHTARG = text, FUNCTION = trap.boom);
CREATE DOMAIN trap.float8 AS pg_catalog.float8 CHECK (trap.boom(VALUE));
CREATE DOMAIN trap.int8 AS pg_catalog.int8 CHECK (trap.boom(VALUE::float8));
"""


def test_a_tenant_owning_the_database_cannot_steer_the_log_readers_session(csv_cluster):
    """The database's owner puts a schema of look-alikes first on its search_path and turns read-only
    off for it: the reader's session resolves pg_catalog's names only and stays read-only."""
    database = "serverlog_tenant"
    csv_cluster.execute(f"DROP DATABASE IF EXISTS {database}")
    csv_cluster.execute(f"CREATE DATABASE {database}")
    with psycopg.connect(csv_cluster.dsn(database), autocommit=True) as owner:
        owner.execute(TRAPS)
        owner.execute(f"ALTER DATABASE {database} SET search_path = trap, pg_catalog, public")
        owner.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = off")
    link = ServerLink(csv_cluster.dsn(database))
    try:
        assert link.settings().destination  # pg_settings WHERE name IN (...): text = text
        roles, databases = link.names()
        assert database in databases and roles
        assert isinstance(link.ls_logdir(), list)  # ::float8, ::bigint
        with pytest.raises(SourceError):  # read-only whatever the database says
            link._rows("CREATE TABLE public.written (x int)")  # noqa: SLF001 (the session itself)
    finally:
        link.close()
        csv_cluster.execute(f"DROP DATABASE IF EXISTS {database}")
