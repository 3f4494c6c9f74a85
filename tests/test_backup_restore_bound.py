"""`backup verify --restore` runs the archive's own functions (an index expression, a check constraint) as
it restores: a database's owner can make one run for ever. The restore is bounded (verify.restore_deadline),
so that backup fails verification, saying why, and the scratch database is dropped."""
from __future__ import annotations

import re
import time

from click.testing import CliRunner

from exporter.backup import verify
from exporter.cli import main

# IMMUTABLE, as an index expression needs: PostgreSQL takes the owner's word for it. Sleeps in the scratch copy only.
SLOW_INDEX = ("CREATE FUNCTION slow(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN"
              " IF current_database() LIKE 'pgvigil_verify%' THEN PERFORM pg_sleep(3600); END IF; RETURN $1; END $$;"
              "CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE INDEX ON t (slow(id))")


def test_a_restore_that_runs_for_ever_is_stopped_and_its_scratch_database_dropped(cluster, fresh_db, tmp_path,
                                                                                     monkeypatch):
    """Before: pg_restore waited on the index build for ever (measured: still in CREATE INDEX after 25 s,
    with no bound anywhere), and with it every backup verify had still to check."""
    monkeypatch.setattr(verify, "RESTORE_MIN_SECONDS", 3)
    cluster.execute(SLOW_INDEX, fresh_db.rsplit("/", 1)[1])
    directory = tmp_path / "backups"
    run = CliRunner().invoke(main, ["backup", "run", "--dsn", fresh_db, "--dir", str(directory)])
    assert run.exit_code == 0, run.output
    started = time.monotonic()
    result = CliRunner().invoke(main, ["backup", "verify", "--dir", str(directory), "--restore", "--dsn", fresh_db])
    assert time.monotonic() - started < 30, result.output
    assert result.exit_code == 1, result.output
    assert re.search(r"FAILED  pg_restore did not finish within \d+ s \(20 times the dump's own duration, at least "
                     r"3 s\): a function of the archive", result.output), result.output
    assert cluster.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'pgvigil_verify%'") == [(0,)]


def test_the_bound_follows_the_dumps_own_duration():
    assert verify.restore_deadline({"started_epoch": 100.0, "finished_epoch": 400.0}) == \
        max(verify.RESTORE_MIN_SECONDS, 300 * verify.RESTORE_DUMP_FACTOR)
    for odd in ({}, {"started_epoch": 5, "finished_epoch": 1}, {"started_epoch": "x", "finished_epoch": 1e400},
                {"started_epoch": 0, "finished_epoch": float("nan")}):
        assert verify.restore_deadline(odd) == verify.RESTORE_MIN_SECONDS
