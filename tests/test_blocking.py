"""The blocking pack (exporter/packs/blocking.yaml) on real lock trees, on every supported major (13-18).

Each test builds a real tree of sessions (a three-deep chain of table locks, row locks, advisory
locks, a prepared transaction), waits until PostgreSQL reports every waiter as waiting, and scrapes
it with pgvigil as the superuser and as a pg_monitor-only role. One test commits the root while
scrapes run in a loop: no scrape fails, and once the waiters have gone no root is left. The
prepared transaction needs max_prepared_transactions, so it runs once, on a cluster of its own.
"""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import ExitStack
from typing import Iterator

import psycopg
import pytest
from packs.exposition import Sample, find, parse_samples, value

from exporter.config import parse_config
from exporter.dev.throwaway import ThrowawayCluster
from exporter.pgbin import find_bindir
from exporter.scrape.assembly import scrape_once

MONITOR = "pgvigil_blocking_monitor"


@pytest.fixture(scope="module")
def cluster(major_cluster):
    return major_cluster


@pytest.fixture(scope="module")
def db(cluster) -> Iterator[str]:
    name = "t_blocking_" + uuid.uuid4().hex[:8]
    cluster.create_database(name)
    cluster.execute(f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MONITOR}') THEN CREATE ROLE {MONITOR} LOGIN; END IF;
        END $$; GRANT pg_monitor TO {MONITOR}""")
    cluster.execute("""
        CREATE TABLE a (id int); CREATE TABLE b (id int); CREATE TABLE c (id int);
        CREATE TABLE accounts (id int PRIMARY KEY, balance int);
        INSERT INTO accounts VALUES (1, 100), (2, 200);""", name)
    yield name
    cluster.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


class Tree:
    """Sessions of one test: the root's connection, and waiters each running a statement in a thread."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conns: list[psycopg.Connection] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def session(self, application: str, autocommit: bool = False) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, application_name=application, autocommit=autocommit)
        self.conns.append(conn)
        return conn

    def wait_in(self, conn: psycopg.Connection, sql: str) -> None:
        """Run `sql` on `conn` in a thread (it blocks), then wait until the server reports it waiting on a lock."""
        pid = conn.info.backend_pid

        def run() -> None:
            try:
                conn.execute(sql)
            except psycopg.Error as exc:  # a session an operator (or the test) ended
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)
        deadline = time.monotonic() + 30
        with psycopg.connect(self.dsn, autocommit=True) as probe:
            while time.monotonic() < deadline:
                row = probe.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if row and row[0] == "Lock":
                    return
                time.sleep(0.05)
        raise AssertionError(f"session {pid} never waited on a lock for: {sql}")

    def close(self) -> None:
        """End every session from outside. Not by rolling each back in turn: a rollback waits for its
        connection's thread, which may be queued behind a session later in the list (the queue's order is
        the server's), and only that session's rollback would free it."""
        pids = [conn.info.backend_pid for conn in self.conns if not conn.closed]
        if pids:
            with psycopg.connect(self.dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
        for thread in self.threads:
            thread.join(timeout=30)
        for conn in self.conns:
            conn.close()


@pytest.fixture
def tree(cluster, db) -> Iterator[Tree]:
    with ExitStack() as stack:
        made = Tree(cluster.dsn(db))
        stack.callback(made.close)
        yield made


def scrape(cluster, db: str, role: str = "postgres") -> list[Sample]:
    config = parse_config(f"targets:\n  app:\n    dsn: {cluster.dsn(db, user=role)}\ncollectors: [blocking]\n")
    samples = parse_samples(scrape_once(config))
    failed = [s.labels for s in find(samples, "pgvigil_query_success") if s.value != 1]
    assert failed == []
    return samples


def root_of(samples: list[Sample], pid: int) -> dict[str, float]:
    """The root series of one pid: metric suffix -> value, and its labels under 'labels'."""
    found = {s.name.removeprefix("pg_blocking_root_"): s for s in samples
             if s.name.startswith("pg_blocking_root_") and s.labels.get("pid") == str(pid)}
    assert found, f"pid {pid} is not a root: {[s.labels for s in find(samples, 'pg_blocking_root_waiters')]}"
    return found  # type: ignore[return-value]


@pytest.mark.parametrize("role", ["postgres", MONITOR])
def test_three_deep_chain_of_table_locks_has_one_root_idle_in_transaction(cluster, db, tree, role):
    root = tree.session("batch-job")
    root.execute("LOCK TABLE a IN ACCESS EXCLUSIVE MODE")  # then idle in transaction: the 3 a.m. case
    first, second, third = (tree.session(f"web-{i}") for i in (1, 2, 3))
    first.execute("LOCK TABLE b IN ACCESS EXCLUSIVE MODE")
    tree.wait_in(first, "SELECT count(*) FROM a")
    second.execute("LOCK TABLE c IN ACCESS EXCLUSIVE MODE")
    tree.wait_in(second, "SELECT count(*) FROM b")
    tree.wait_in(third, "SELECT count(*) FROM c")
    time.sleep(1.1)

    samples = scrape(cluster, db, role)
    found = root_of(samples, root.info.backend_pid)
    labels = found["waiters"].labels
    assert {k: labels[k] for k in ("datname", "usename", "application_name", "state", "locktype", "mode",
                                   "relation")} == {
        "datname": db, "usename": "postgres", "application_name": "batch-job", "state": "idle in transaction",
        "locktype": "relation", "mode": "AccessExclusiveLock", "relation": "public.a"}
    assert found["direct_waiters"].value == 1 and found["waiters"].value == 3
    assert found["max_wait_seconds"].value >= 1
    assert found["transaction_age_seconds"].value >= found["max_wait_seconds"].value
    assert found["state_seconds"].value >= 1
    # the sessions in the middle of the chain block others but are blocked: not roots
    roots = {s.labels["pid"] for s in find(samples, "pg_blocking_root_waiters")}
    assert roots.isdisjoint({str(c.info.backend_pid) for c in (first, second, third)})
    assert value(samples, "pg_blocking_blocked_sessions") >= 3
    assert value(samples, "pg_blocking_root_blockers") >= 1
    assert value(samples, "pg_blocking_max_wait_seconds") >= 1  # read by another query, a moment apart


def test_row_lock_waiters_name_the_table_through_the_tuple_lock(cluster, db, tree):
    root = tree.session("orders")
    root.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1")
    waiters = [tree.session(f"pay-{i}") for i in range(2)]
    for waiter in waiters:
        tree.wait_in(waiter, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")

    found = root_of(scrape(cluster, db), root.info.backend_pid)
    labels = found["waiters"].labels
    # the first waiter waits on the root's transaction id; the second on the tuple lock the first holds
    assert (labels["locktype"], labels["mode"], labels["relation"]) == ("transactionid", "ExclusiveLock",
                                                                        "public.accounts")
    assert found["direct_waiters"].value >= 1 and found["waiters"].value == 2


def test_advisory_lock_held_outside_a_transaction(cluster, db, tree):
    root = tree.session("scheduler", autocommit=True)
    root.execute("SELECT pg_advisory_lock(4242)")  # session level: idle, no transaction open
    tree.wait_in(tree.session("scheduler-2", autocommit=True), "SELECT pg_advisory_lock(4242)")
    try:
        found = root_of(scrape(cluster, db), root.info.backend_pid)
    finally:
        root.execute("SELECT pg_advisory_unlock(4242)")
    labels = found["waiters"].labels
    assert (labels["state"], labels["locktype"], labels["mode"], labels["relation"]) == (
        "idle", "advisory", "ExclusiveLock", "")
    assert found["waiters"].value == 1
    assert "transaction_age_seconds" not in found  # no transaction: the series is absent, not 0


def test_root_committing_while_scraped_leaves_no_error_and_no_stale_root(cluster, db, tree):
    root = tree.session("committer")
    root.execute("UPDATE accounts SET balance = 0 WHERE id = 2")
    waiter = tree.session("waiter")
    tree.wait_in(waiter, "UPDATE accounts SET balance = 1 WHERE id = 2")
    pid = str(root.info.backend_pid)
    # before the commit, the root is found; then it commits while the scrapes go on
    found_before = any(s.labels.get("pid") == pid for s in find(scrape(cluster, db), "pg_blocking_root_waiters"))
    scrapes = 1
    stop = time.monotonic() + 1.5
    committer = threading.Timer(0.2, root.commit)
    committer.start()
    try:
        while time.monotonic() < stop:  # scrape() itself asserts that every query succeeded
            scrape(cluster, db)
            scrapes += 1
    finally:
        committer.join(timeout=10)
    for thread in tree.threads:
        thread.join(timeout=30)
    waiter.commit()
    after = scrape(cluster, db)
    assert scrapes >= 2 and found_before
    assert [s for s in find(after, "pg_blocking_root_waiters") if s.labels["pid"] == pid] == []
    assert not any(s.labels.get("application_name") in ("committer", "waiter")
                   for s in find(after, "pg_blocking_root_waiters"))


def test_prepared_transaction_is_a_root_without_a_session():
    """pg_blocking_pids() names a prepared transaction pid 0: the root is reported with its lock and age.
    Its own cluster: preparing transactions needs max_prepared_transactions, set at server start."""
    with ThrowawayCluster(settings={"max_prepared_transactions": "2"}, bindir=find_bindir()) as pg:
        pg.execute("CREATE TABLE ledger (id int)")
        with psycopg.connect(pg.dsn(), autocommit=True) as root:
            root.execute("BEGIN")
            root.execute("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE")
            root.execute("PREPARE TRANSACTION 'pgvigil-test'")
        tree = Tree(pg.dsn())
        try:
            tree.wait_in(tree.session("reader", autocommit=True), "SELECT count(*) FROM ledger")
            found = root_of(scrape(pg, "postgres"), 0)
        finally:
            pg.execute("ROLLBACK PREPARED 'pgvigil-test'")
            tree.close()
    labels = found["waiters"].labels
    assert (labels["state"], labels["locktype"], labels["mode"], labels["relation"], labels["usename"]) == (
        "prepared transaction", "relation", "AccessExclusiveLock", "public.ledger", "")
    assert found["waiters"].value == 1 and found["transaction_age_seconds"].value >= 0


def test_a_queue_of_hundreds_of_waiters_costs_no_more_than_finding_them():
    """400 sessions queued for one table's ACCESS EXCLUSIVE lock: each waits for the holder and everyone
    ahead (~80,000 edges). The root query once counted direct waiters with a subquery per tree row
    (N*N*N: 1.0 s against 0.15 s for pg_blocking's pg_blocking_pids() calls); now it costs about as
    much as pg_blocking. Compared with pg_blocking on the same server, so a busy machine slows both."""
    import yaml

    from exporter.config import PACKS_DIR

    waiting = 400
    queries = {q["name"]: q["sql"] for q in yaml.safe_load((PACKS_DIR / "blocking.yaml").read_text())["queries"]}
    with ThrowawayCluster(settings={"max_connections": str(waiting + 20)}, bindir=find_bindir()) as pg:
        pg.execute("CREATE TABLE queue (id int)")
        tree = Tree(pg.dsn())
        try:
            root = tree.session("holder")
            root.execute("LOCK TABLE queue IN ACCESS EXCLUSIVE MODE")
            for _ in range(waiting):
                conn = tree.session("queued")  # in a transaction: LOCK TABLE needs one
                thread = threading.Thread(target=_ignore_errors, daemon=True,
                                          args=(conn, "LOCK TABLE queue IN ACCESS EXCLUSIVE MODE"))
                thread.start()
                tree.threads.append(thread)
            with psycopg.connect(pg.dsn(), autocommit=True) as probe:
                deadline = time.monotonic() + 60
                while probe.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                    ).fetchone()[0] < waiting:
                    assert time.monotonic() < deadline, "the queue never formed"
                    time.sleep(0.1)
                timed = {}
                for name, sql in queries.items():
                    runs = []
                    for _ in range(2):
                        started = time.monotonic()
                        rows = probe.execute(sql).fetchall()
                        runs.append(time.monotonic() - started)
                    timed[name] = (min(runs), rows)
            found = root_of(scrape(pg, "postgres"), root.info.backend_pid)
        finally:
            tree.close()
    # every queued session is found (a few may be between two waits of the queue's deadlock checks)
    assert timed["pg_blocking"][1][0][0] >= 0.95 * waiting, timed["pg_blocking"][1]
    assert found["direct_waiters"].value == found["waiters"].value >= 0.95 * waiting
    assert timed["pg_blocking_root"][0] <= 3 * timed["pg_blocking"][0] + 0.1, timed


def _ignore_errors(conn: psycopg.Connection, sql: str) -> None:
    try:
        conn.execute(sql)
    except psycopg.Error:  # cancelled or ended when the test closes the queue
        pass
