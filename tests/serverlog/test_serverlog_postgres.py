"""The server log of real PostgreSQL (logging_collector on) read into counters: each format, failed logins
within one interval, rotation in the middle of a read, a pgvigil restart, the SQL source with only the
printed grants, and planted passwords absent from every output."""
from __future__ import annotations

import logging
import re
import time

import psycopg
import pytest
from conftest import parse_exposition, sample, wait_until
from pglogs import PASSWORD, Captured, errors, log_config, logging_cluster, metrics, serving, wrong_logins

from exporter.grants import grants_text

INTERVAL = 1.0


@pytest.fixture(scope="module", params=["csvlog", "jsonlog", "stderr"])
def fmt_cluster(request):
    pg = logging_cluster(request.param)
    yield request.param, pg
    pg.cleanup()


def read(handle) -> dict:
    return parse_exposition(metrics(handle))


def ready(handle) -> dict | None:
    samples = read(handle)
    return samples if sample(samples, "pgvigil_log_readable", target="db") == 1 else None


def test_failed_logins_counted_by_user_within_one_interval_and_no_secret_leaks(fmt_cluster, tmp_path):
    fmt, pg = fmt_cluster
    captured = Captured()
    logging.getLogger("exporter").addHandler(captured)
    try:
        with serving(log_config(pg, tmp_path / "state.json")) as handle:
            wait_until(lambda: ready(handle), 30, "the first read of the log")
            before = read(handle)
            planted = ["Planted-Secret-Pw-1", "Conn-Secret-Pw-2", "User-Is-A-Password-3"]
            pg.execute(f"ALTER ROLE alice PASSWORD '{planted[0]}'")  # logged: log_statement = ddl
            pg.execute(f"ALTER ROLE alice PASSWORD '{PASSWORD}'")
            with pytest.raises(psycopg.Error):
                pg.execute(f"SELECT 'postgresql://alice:{planted[1]}@db.example/x'::int")
            pg.execute("SELECT pg_sleep(0.25)")  # logged before the logins: counted by the time they are
            wrong_logins(pg, "alice", 6)
            wrong_logins(pg, planted[2], 1)  # a password typed as the user name
            started = time.monotonic()

            def counted():
                samples = read(handle)
                found = sample(samples, "pg_log_authentication_failures_total", target="db", user="alice",
                               database="postgres", method="password")
                return samples if found == 6 else None
            samples = wait_until(counted, 30, "6 failed logins of alice")
            assert time.monotonic() - started < 2 * INTERVAL + 2  # within one interval (plus the read itself)
            assert sample(samples, "pg_log_authentication_failures_total", user="unknown", method="password") == 1
            assert sample(samples, "pg_log_messages_total", severity="FATAL", sqlstate="28P01") == 7 + (
                sample(before, "pg_log_messages_total", severity="FATAL", sqlstate="28P01") or 0)
            code = "unknown" if fmt == "stderr" else "22P02"  # the prefix has no %e: a code only for known messages
            assert (sample(samples, "pg_log_messages_total", severity="ERROR", sqlstate=code) or 0) >= 1, \
                [k for k in samples if k[0] == "pg_log_messages_total"]
            assert sample(samples, "pg_log_connections_total", target="db") >= 1
            assert sample(samples, "pg_log_statement_duration_seconds_count", target="db") >= 1
            assert sample(samples, "pg_log_statement_duration_seconds_bucket", target="db", le="0.25") == 0
            assert sample(samples, "pgvigil_log_parse_errors_total", target="db") == 0
            text = metrics(handle)
        state = (tmp_path / "state.json").read_text()
    finally:
        logging.getLogger("exporter").removeHandler(captured)
    logs = "\n".join(captured.lines)
    for secret in [*planted, PASSWORD, "not-the-password"]:
        assert secret not in text and secret not in logs and secret not in state
    assert (pg.datadir / "log").exists() and any(
        planted[0] in p.read_text(errors="replace") for p in (pg.datadir / "log").iterdir())  # the log does hold it


def test_rotation_in_the_middle_of_a_read_and_a_restart_count_each_line_once(fmt_cluster, tmp_path):
    fmt, pg = fmt_cluster
    rotation_and_restart(pg, fmt, tmp_path, "file")


def test_rotation_and_restart_through_sql(tmp_path):
    pg = logging_cluster("csvlog")
    try:
        rotation_and_restart(pg, "csvlog", tmp_path, "sql")
    finally:
        pg.cleanup()


def rotation_and_restart(pg, fmt: str, tmp_path, source: str) -> None:
    state = tmp_path / "state.json"
    # a read stops mid-file (the budget): the rest waits for the next cycles
    config = log_config(pg, state, source=source, budget="256KiB")

    code = "unknown" if fmt == "stderr" else "22P02"

    def errors_counted(handle):
        return sample(read(handle), "pg_log_messages_total", severity="ERROR", sqlstate=code) or 0

    with serving(config) as handle:
        wait_until(lambda: ready(handle), 30, "the first read of the log")
        base = errors_counted(handle)
        errors(pg, 150, padding=4000)  # ~1 MiB in the old file (message and statement): read over 4 cycles
        time.sleep(1.1)  # log file names have seconds: a rotation in the file's first second reopens the same file
        pg.execute("SELECT pg_rotate_logfile()")
        errors(pg, 150, padding=4000)
        wait_until(lambda: errors_counted(handle) == base + 300, 60, "300 errors across the rotation")
        rotated = sample(read(handle), "pgvigil_log_files_rotated_total", reason="new_file")
        assert rotated is not None and rotated >= 1, (sorted(p.name for p in (pg.datadir / "log").iterdir()),
                                                      [k for k in read(handle) if "rotated" in k[0]])
    errors(pg, 40)  # while pgvigil is down
    with serving(config) as handle:  # a new process: its counters start at 0, its reading at the saved position
        wait_until(lambda: errors_counted(handle) >= 40, 30, "the errors written while pgvigil was down")
        time.sleep(3 * INTERVAL)
        assert errors_counted(handle) == 40


def test_sql_source_with_only_the_printed_grants(tmp_path):
    pg = logging_cluster("csvlog")
    try:
        pg.execute("CREATE ROLE logreader LOGIN PASSWORD 'Reader-Pw-9'")
        config = log_config(pg, tmp_path / "state.json", source="sql",
                            dsn=pg.dsn(user="logreader", password="Reader-Pw-9"))
        report, ok = grants_text(config)
        assert ok
        grants = [line for line in report.splitlines() if line.startswith(("GRANT", "ALTER"))]
        assert "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_logdir() TO logreader;" in grants
        assert "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint) TO logreader;" in grants
        assert "GRANT pg_read_all_settings TO logreader;" in grants
        with serving(config) as handle:  # before the grants: not readable, with its reason
            wait_until(lambda: sample(read(handle), "pgvigil_log_source_errors_total",
                                      reason="log_directory_hidden"), 30, "the refusal counted")
            assert sample(read(handle), "pgvigil_log_readable", target="db") == 0
        for statement in grants:
            pg.execute(statement)
        assert "missing today: nothing" in grants_text(config)[0]
        with serving(config) as handle:
            wait_until(lambda: ready(handle), 30, "the first read of the log through SQL")
            wrong_logins(pg, "alice", 3)
            wait_until(lambda: sample(read(handle), "pg_log_authentication_failures_total", user="alice",
                                      method="password") == 3, 30, "3 failed logins read through SQL")
            text = metrics(handle)
            assert re.search(r'pgvigil_log_read_bytes_total\{target="db"\} [1-9]', text)
            assert "Reader-Pw-9" not in text
    finally:
        pg.cleanup()
