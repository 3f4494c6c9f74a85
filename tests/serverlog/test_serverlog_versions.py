"""Every supported major's log in a format it writes (all three on 18; 15's are in test_serverlog_postgres.py):
the columns, keys and messages the parsers and the classifier rely on did not move."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest
from conftest import wait_until
from pglogs import log_config, logging_cluster, wrong_logins

from exporter.dev.servers import server_bindir
from exporter.serverlog.collector import followers_of


def deadlock(pg) -> None:
    """Two sessions locking two rows in opposite orders: one of them gets ERROR 40P01."""
    pg.execute("CREATE TABLE IF NOT EXISTS dl (id int PRIMARY KEY); "
               "INSERT INTO dl VALUES (1), (2) ON CONFLICT DO NOTHING")
    barrier = threading.Barrier(2, timeout=10)

    def session(first: int, second: int) -> None:
        with psycopg.connect(pg.dsn()) as conn:
            conn.execute("SET deadlock_timeout = '100ms'")
            conn.execute("UPDATE dl SET id = id WHERE id = %s", (first,))
            barrier.wait()
            try:
                conn.execute("UPDATE dl SET id = id WHERE id = %s", (second,))
            except psycopg.errors.DeadlockDetected:
                conn.rollback()
    threads = [threading.Thread(target=session, args=args) for args in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def lock_wait(pg) -> None:
    """A session waiting 300 ms for a row another holds: past deadlock_timeout, logged by log_lock_waits."""
    with psycopg.connect(pg.dsn()) as holder:
        holder.execute("UPDATE dl SET id = id WHERE id = 1")
        waiter = threading.Thread(target=pg.execute, args=("UPDATE dl SET id = id WHERE id = 1",))
        waiter.start()
        time.sleep(0.3)
    waiter.join(30)


@pytest.mark.parametrize("major, fmt", [(13, "csvlog"), (14, "stderr"), (16, "jsonlog"), (17, "csvlog"),
                                        (18, "csvlog"), (18, "jsonlog"), (18, "stderr")])
def test_each_major_in_a_format(major, fmt, tmp_path):
    pg = logging_cluster(fmt, bindir=server_bindir(major), log_lock_waits="on", deadlock_timeout="'100ms'")
    follower = followers_of(log_config(pg, None))[0]
    follower.start()
    try:
        counters = follower.counters
        wait_until(lambda: counters.readable is None, 30, "the first read")
        wrong_logins(pg, "alice", 3)
        deadlock(pg)
        lock_wait(pg)
        pg.execute("SELECT pg_sleep(0.21)")
        wrong_logins(pg, "alice", 1)  # last: when it is counted, everything before is too

        def done():
            with counters.lock:
                return counters.auth_failures.values.get(("alice", "postgres", "password")) == 4
        wait_until(done, 30, "4 failed logins")
        time.sleep(0.1)
        with counters.lock:
            assert counters.simple.get("deadlocks") == 1
            assert counters.simple.get("lock_waits", 0) >= 1
            assert sum(counters.durations.counts) >= 1
            assert counters.parse_errors == 0 and counters.entries > 0
            if fmt != "stderr":
                assert counters.messages.values[("ERROR", "40P01")] == 1
    finally:
        follower.stop()
        pg.cleanup()
