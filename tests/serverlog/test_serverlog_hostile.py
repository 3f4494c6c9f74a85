"""A hostile tenant's or a broken environment's input: nothing it writes may forge a count or stop the reader."""
from __future__ import annotations

import time

import psycopg
import pytest
from pglogs import logging_cluster

from exporter.serverlog import csvlog


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
