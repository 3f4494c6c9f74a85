"""The shipped query packs against a real PostgreSQL of every supported major (13-18), with every metric provoked first.

One database is set up with known state (12,000 dead tuples, a held lock with a blocked
session, an idle transaction, an invalid and an unused index, a table without RLS, slow
statements ...), then scraped once as the superuser and once as a role that only
has pg_monitor. Each test reads one provoked value back from both scrapes, on every major where
the view behind it exists (the whole module runs once per major, one cluster each). The vector
pack runs against real pgvector in test_packs_vector.py.
"""
from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from packs.exposition import Sample, find, parse_samples, value

from exporter.bundle.metrics_doc import pack_docs
from exporter.config import parse_config
from exporter.scrape.assembly import scrape_once

MONITOR_ROLE = "pgvigil_monitor"
ROLES = ("superuser", "monitor")
DEAD_TUPLES = 12_000
SLEEP_SECONDS = 0.2
SLEEP_CALLS = 5


@pytest.fixture(scope="module")
def cluster(major_cluster):
    """This module's tests run on each supported major; conftest's fresh_db follows this override."""
    return major_cluster


@pytest.fixture(scope="module")
def server_version(cluster) -> int:
    return int(cluster.execute("SHOW server_version_num")[0][0])


def ensure_monitor_role(cluster) -> None:
    """The README's "Monitoring role": a login role with nothing but pg_monitor."""
    cluster.execute(
        f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MONITOR_ROLE}') THEN
                CREATE ROLE {MONITOR_ROLE} LOGIN PASSWORD 'monitor-secret';
              END IF;
            END $$;
            GRANT pg_monitor TO {MONITOR_ROLE};"""
    )


SESSION_ROLES = ("pgvigil_alice", "pgvigil_bob")  # users of the sessions of the pg_stat_activity tests


def ensure_session_roles(cluster) -> None:
    """Made before the provoked scrape too, so the role counts it reads stay the cluster's."""
    cluster.execute("DO $$ BEGIN " + " ".join(
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF;"
        for role in SESSION_ROLES) + " END $$")


def scrape(cluster, dbname: str, role: str, collectors: str = "[default]") -> list[Sample]:
    if role == "monitor":
        ensure_monitor_role(cluster)
    user = MONITOR_ROLE if role == "monitor" else "postgres"
    dsn = cluster.dsn(dbname, user=user)
    config = parse_config(f"targets:\n  app:\n    dsn: {dsn}\ncollectors: {collectors}\n")
    return parse_samples(scrape_once(config))


def wait_until(check, what: str, attempts: int = 200) -> None:
    """Statistics reach the views asynchronously: poll instead of sleeping a fixed time."""
    for _ in range(attempts):
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


SETUP_SQL = f"""
CREATE EXTENSION pg_stat_statements;
CREATE TABLE bloat (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false);
INSERT INTO bloat SELECT g, 'x' FROM generate_series(1, {DEAD_TUPLES}) g;
DELETE FROM bloat;
CREATE TABLE vacuumed (id int) WITH (autovacuum_enabled = false);
INSERT INTO vacuumed VALUES (1);
CREATE TABLE indexed (id int, used int, unused int) WITH (autovacuum_enabled = false);
INSERT INTO indexed SELECT g, g, g FROM generate_series(1, 1000) g;
CREATE INDEX indexed_used ON indexed (used);
CREATE INDEX indexed_unused ON indexed (unused);
ANALYZE indexed;
CREATE TABLE dup (v int);
INSERT INTO dup VALUES (1), (1);
CREATE TABLE secured (id int);
ALTER TABLE secured ENABLE ROW LEVEL SECURITY;
CREATE TABLE locked (id int);
CREATE TABLE deadlock_a (id int); INSERT INTO deadlock_a VALUES (1);
CREATE TABLE deadlock_b (id int); INSERT INTO deadlock_b VALUES (1);
"""

TABLES_WITHOUT_RLS = {"bloat", "vacuumed", "indexed", "dup", "locked", "deadlock_a", "deadlock_b"}

WORKLOAD_SQL = """
SET enable_seqscan = off; SET enable_bitmapscan = off;
SELECT * FROM indexed WHERE used = 5;
RESET enable_seqscan; RESET enable_bitmapscan;
SET work_mem = '64kB';
SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC) s;
RESET work_mem;
""" + "SELECT pg_sleep(%s);\n" % SLEEP_SECONDS * SLEEP_CALLS


def provoke_deadlock(dsn: str) -> None:
    """Two sessions lock two tables in opposite order; PostgreSQL aborts one of them."""
    first, second = psycopg.connect(dsn), psycopg.connect(dsn)
    errors: list[Exception] = []
    try:
        first.cursor().execute("LOCK TABLE deadlock_a")
        second.cursor().execute("LOCK TABLE deadlock_b")

        def cross(conn, table):
            try:
                conn.cursor().execute(f"LOCK TABLE {table}")
            except psycopg.errors.DeadlockDetected as exc:
                errors.append(exc)
            finally:
                conn.rollback()

        worker = threading.Thread(target=cross, args=(first, "deadlock_b"))
        worker.start()
        cross(second, "deadlock_a")
        worker.join()
    finally:
        first.close()
        second.close()
    assert len(errors) == 1, "expected exactly one deadlock victim"


class HeldSessions:
    """An idle transaction holding ACCESS EXCLUSIVE on `locked`, and a session blocked by it."""

    def __init__(self, dsn: str) -> None:
        self.holder = psycopg.connect(dsn)
        self.holder.cursor().execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        self.holder_pid = self.holder.info.backend_pid
        self.waiter = psycopg.connect(dsn, autocommit=True)
        self.waiter_pid = self.waiter.info.backend_pid
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        self.waiter.cursor().execute("SELECT count(*) FROM locked")

    def release(self) -> None:
        self.holder.rollback()
        self.thread.join(timeout=30)
        self.holder.close()
        self.waiter.close()


@pytest.fixture(scope="module")
def provoked(cluster):
    """A database with every provoked condition, scraped by both roles while it holds."""
    ensure_monitor_role(cluster)
    ensure_session_roles(cluster)
    db = "t_packs_" + uuid.uuid4().hex[:8]
    dsn = cluster.create_database(db)
    cluster.execute(SETUP_SQL, db)
    cluster.execute("VACUUM vacuumed", db)
    try:
        cluster.execute("CREATE UNIQUE INDEX CONCURRENTLY dup_v_key ON dup (v)", db)
    except psycopg.errors.UniqueViolation:
        pass  # expected: the failed build leaves the index behind, marked invalid
    cluster.execute(WORKLOAD_SQL, db)
    provoke_deadlock(dsn)
    victim = psycopg.connect(dsn)  # a session an operator terminates: sessions_killed
    cluster.execute(f"SELECT pg_terminate_backend({victim.info.backend_pid})")
    victim.close()
    cluster.execute("CHECKPOINT")
    cluster.execute("SELECT pg_create_physical_replication_slot('pgvigil_test_slot', true)")

    wait_until(lambda: provoked_stats_arrived(cluster, db), "table, index and database statistics to be flushed")
    held = HeldSessions(dsn)
    try:
        wait_until(lambda: cluster.execute(
            f"SELECT wait_event_type FROM pg_stat_activity WHERE pid = {held.waiter_pid}")[0][0] == "Lock",
            "the blocked session to wait on its lock")
        time.sleep(1.1)  # so the idle transaction and the lock wait are at least a second old
        scrapes = {role: scrape(cluster, db, role) for role in ROLES}
    finally:
        held.release()
        cluster.execute("SELECT pg_drop_replication_slot('pgvigil_test_slot')")
    yield db, scrapes
    cluster.execute(f'DROP DATABASE "{db}" WITH (FORCE)')


def provoked_stats_arrived(cluster, db: str) -> bool:
    """Every cumulative counter the tests below read has reached the views.

    Counters arrive asynchronously: through the statistics collector up to 14 (UDP, one report per
    backend at most every 500 ms, the rest at exit), from 15 when a backend flushes (at most once a
    second, or at exit, which happens after the client has hung up), and the checkpointer reports
    its counters only after waking the session that asked for the CHECKPOINT. So each condition a
    test asserts on a counter is polled for here, with the same bound.
    """
    version = int(cluster.execute("SHOW server_version_num")[0][0])
    checks = [
        f"(SELECT n_dead_tup = {DEAD_TUPLES} AND n_tup_ins = {DEAD_TUPLES} AND n_tup_del = {DEAD_TUPLES}"
        " AND n_live_tup = 0 FROM pg_stat_user_tables WHERE relname = 'bloat')",
        "(SELECT heap_blks_hit > 0 FROM pg_statio_user_tables WHERE relname = 'bloat')",
        "(SELECT vacuum_count = 1 FROM pg_stat_user_tables WHERE relname = 'vacuumed')",
        "(SELECT idx_scan = 1 FROM pg_stat_user_indexes WHERE indexrelname = 'indexed_used')",
        "(SELECT deadlocks = 1 AND xact_rollback >= 2 AND temp_files >= 1 AND temp_bytes > 0"
        f" AND tup_deleted >= {DEAD_TUPLES} AND xact_commit > 0 AND blks_hit > 0"
        " FROM pg_stat_database WHERE datname = current_database())",
        "(SELECT buffers_alloc > 0 FROM pg_stat_bgwriter)",
        "(SELECT num_requested >= 1 FROM pg_stat_checkpointer)" if version >= 170000
        else "(SELECT checkpoints_req >= 1 FROM pg_stat_bgwriter)",
    ]
    if version >= 140000:  # session statistics came with PostgreSQL 14; active_time is in milliseconds
        checks.append("(SELECT sessions_killed = 1 AND sessions >= 5"
                      f" AND active_time >= {SLEEP_SECONDS * SLEEP_CALLS * 1000}"
                      " FROM pg_stat_database WHERE datname = current_database())")
    return all(cluster.execute("SELECT " + ", ".join(checks), db)[0])


@pytest.fixture(params=ROLES)
def result(request, provoked):
    """(database name, samples) for one role's scrape."""
    db, scrapes = provoked
    return db, scrapes[request.param]


def expected_queries(cluster, dbname: str) -> set[str]:
    """The default queries that should run on this server and database (version and extensions)."""
    version = int(cluster.execute("SHOW server_version_num")[0][0])
    extensions = {row[0] for row in cluster.execute("SELECT extname FROM pg_extension", dbname)}
    config = parse_config("collectors: [default]\n")
    return {q.name for q in config.queries if q.kind == "postgres" and q.runs_on_version(version)
            and (q.requires_extension is None or q.requires_extension in extensions)}


# -- every pack runs ---------------------------------------------------------

def test_every_query_succeeds_with_pg_stat_statements(cluster, result):
    db, samples = result
    succeeded = {s.labels["query"] for s in find(samples, "pgvigil_query_success") if s.value == 1}
    failed = {s.labels["query"] for s in find(samples, "pgvigil_query_success") if s.value != 1}
    assert failed == set()
    assert "pg_stat_statements_pg17" in succeeded or "pg_stat_statements" in succeeded
    assert succeeded == expected_queries(cluster, db)
    errors = [s for s in find(samples, "pgvigil_query_errors_total") if s.value]
    assert errors == []


@pytest.mark.parametrize("role", ROLES)
def test_every_query_succeeds_without_pg_stat_statements(cluster, fresh_db, role):
    ensure_monitor_role(cluster)
    db = fresh_db.rsplit("/", 1)[1]
    samples = scrape(cluster, db, role)
    succeeded = {s.labels["query"] for s in find(samples, "pgvigil_query_success") if s.value == 1}
    assert succeeded == expected_queries(cluster, db)
    assert [s for s in find(samples, "pgvigil_query_errors_total") if s.value] == []
    assert not [s for s in samples if s.name.startswith("pg_stat_statements_")]
    assert value(samples, "pg_up") == 1


def documented_family(name: str, majors: dict[str, tuple[int, ...]]) -> str:
    """The docs/metrics.md row of a sample: histogram samples carry a suffix the row does not."""
    for suffix in ("_bucket", "_gcount", "_gsum", "_count", "_sum"):
        if name not in majors and name.endswith(suffix) and name[: -len(suffix)] in majors:
            return name[: -len(suffix)]
    return name


def test_metrics_seen_live_are_documented_on_this_major(result, server_version):
    """docs/metrics.md's PostgreSQL column agrees with what this major's server returned."""
    _, samples = result
    majors = {row.name: row.majors for doc in pack_docs() for row in doc.rows}
    own = ("pgvigil_", "pg_exporter_", "pg_up", "pg_scrape_collector_")  # the exporter's own series, not a pack's
    seen = {documented_family(s.name, majors) for s in samples if not s.name.startswith(own)}
    assert sorted(name for name in seen if server_version // 10000 not in majors.get(name, ())) == []


# -- tables ------------------------------------------------------------------

def test_dead_tuples(result):
    db, samples = result
    bloat = {"datname": db, "schemaname": "public", "relname": "bloat"}
    assert value(samples, "pg_stat_user_tables_n_dead_tup", **bloat) == DEAD_TUPLES
    assert value(samples, "pg_stat_user_tables_n_tup_ins", **bloat) == DEAD_TUPLES
    assert value(samples, "pg_stat_user_tables_n_tup_del", **bloat) == DEAD_TUPLES
    assert value(samples, "pg_stat_user_tables_n_live_tup", **bloat) == 0
    assert value(samples, "pg_stat_user_tables_size_bytes", **bloat) > 0
    assert value(samples, "pg_statio_user_tables_heap_blocks_hit", **bloat) > 0


def test_table_and_index_sizes(cluster, result):
    """postgres_exporter's per-table sizes: pg_table_size and pg_indexes_size, adding up to size_bytes."""
    db, samples = result
    for table in ("bloat", "indexed"):
        labels = {"datname": db, "schemaname": "public", "relname": table}
        table_size, index_size = cluster.execute(
            f"SELECT pg_table_size('{table}'), pg_indexes_size('{table}')", db)[0]
        assert value(samples, "pg_stat_user_tables_table_size_bytes", **labels) == table_size > 0
        assert value(samples, "pg_stat_user_tables_index_size_bytes", **labels) == index_size > 0
        assert value(samples, "pg_stat_user_tables_size_bytes", **labels) == table_size + index_size


def test_vacuum_times_are_epoch_seconds_and_zero_when_never(cluster, result):
    db, samples = result
    vacuumed = value(samples, "pg_stat_user_tables_last_vacuum", datname=db, relname="vacuumed")
    expected = cluster.execute(
        "SELECT extract(epoch FROM last_vacuum) FROM pg_stat_user_tables WHERE relname = 'vacuumed'", db)[0][0]
    assert vacuumed == pytest.approx(float(expected))
    assert value(samples, "pg_stat_user_tables_vacuum_count", datname=db, relname="vacuumed") == 1
    assert value(samples, "pg_stat_user_tables_last_vacuum", datname=db, relname="bloat") == 0
    assert value(samples, "pg_stat_user_tables_last_autovacuum", datname=db, relname="bloat") == 0


def test_exclusively_locked_table_is_listed_without_a_size(result):
    db, samples = result
    assert value(samples, "pg_stat_user_tables_n_live_tup", datname=db, relname="locked") == 0
    for size in ("size_bytes", "table_size_bytes", "index_size_bytes"):
        assert find(samples, f"pg_stat_user_tables_{size}", datname=db, relname="locked") == []
        assert find(samples, f"pg_stat_user_tables_{size}", datname=db, relname="bloat") != []


# -- indexes -----------------------------------------------------------------

def test_unused_and_used_indexes(result):
    db, samples = result
    assert value(samples, "pg_index_unused", datname=db, relname="indexed", indexrelname="indexed_unused") == 1
    assert find(samples, "pg_index_unused", indexrelname="indexed_used") == []
    assert find(samples, "pg_index_unused", indexrelname="bloat_pkey") == []  # unique: enforces a constraint
    assert value(samples, "pg_stat_user_indexes_idx_scan", datname=db, indexrelname="indexed_used") == 1
    assert value(samples, "pg_stat_user_indexes_idx_scan", datname=db, indexrelname="indexed_unused") == 0
    assert value(samples, "pg_stat_user_indexes_size_bytes", datname=db, indexrelname="indexed_used") > 0


def test_failed_concurrent_index_build_is_invalid(result):
    db, samples = result
    assert value(samples, "pg_index_invalid", datname=db, schemaname="public", relname="dup",
                 indexrelname="dup_v_key") == 1
    assert [s.labels["indexrelname"] for s in find(samples, "pg_index_invalid", datname=db)] == ["dup_v_key"]


# -- sessions, locks, long-running work --------------------------------------

def test_idle_in_transaction_session_and_its_age(result):
    db, samples = result
    assert value(samples, "pg_stat_activity_count", datname=db, state="idle in transaction") == 1
    assert value(samples, "pg_stat_activity_max_idle_in_transaction_seconds", datname=db) >= 1.0
    assert value(samples, "pg_stat_activity_max_tx_duration", datname=db, state="idle in transaction") >= 1.0
    assert value(samples, "pg_stat_activity_count", datname=db, state="fastpath function call") == 0


def test_held_lock_and_blocked_session(result):
    db, samples = result
    assert value(samples, "pg_locks_blocked_sessions", datname=db) == 1
    assert value(samples, "pg_stat_activity_waiting_count", datname=db) == 1
    assert value(samples, "pg_locks_max_wait_seconds", datname=db) >= 1.0
    assert value(samples, "pg_locks_count", datname=db, mode="accessexclusivelock") >= 1
    assert value(samples, "pg_locks_count", datname=db, mode="sharerowexclusivelock") == 0


def test_blocked_query_is_the_longest_running_and_in_the_age_histogram(result):
    db, samples = result
    assert value(samples, "pg_stat_activity_max_query_duration_seconds", datname=db) >= 1.0
    # the blocked session, under its wait event (postgres_exporter 0.20's labels), beside pgvigil's own
    assert value(samples, "pg_stat_activity_count", datname=db, state="active", wait_event_type="Lock",
                 wait_event="relation") == 1
    assert value(samples, "pg_stat_activity_count", datname=db, state="active", application_name="pgvigil") == 1
    older_than_a_second = (value(samples, "pg_stat_activity_query_age_seconds_bucket", le="+Inf")
                           - value(samples, "pg_stat_activity_query_age_seconds_bucket", le="1.0"))
    assert older_than_a_second >= 1
    assert value(samples, "pg_stat_activity_query_age_seconds_gcount") >= 1


# pgvigil's pg_stat_activity query before postgres_exporter 0.20's labels: the series a sum by
# (datname, state) of the new ones must equal.
OLD_ACTIVITY_SQL = """
SELECT d.datname, s.state, coalesce(a.count, 0) AS count
FROM pg_database d
CROSS JOIN (VALUES ('active'), ('idle'), ('idle in transaction'), ('idle in transaction (aborted)'),
                   ('fastpath function call'), ('disabled')) AS s(state)
LEFT JOIN (SELECT datname, state, count(*) AS count FROM pg_stat_activity
           WHERE datname IS NOT NULL AND state IS NOT NULL GROUP BY datname, state) a
  ON a.datname = d.datname AND a.state = s.state
"""
ACTIVITY_LABELS = ("datname", "state", "usename", "application_name", "backend_type", "wait_event_type",
                   "wait_event")


class Sessions:
    """Sessions of several users and applications in `db`: idle, idle in a transaction, sleeping."""

    def __init__(self, cluster, db: str, spec: list[tuple[str, str, str]]) -> None:
        self.conns: list = []
        self.threads: list[threading.Thread] = []
        for user, application, state in spec:
            conn = psycopg.connect(cluster.dsn(db, user=user), application_name=application,
                                   autocommit=state != "idle in transaction")
            self.conns.append(conn)
            if state == "active":
                thread = threading.Thread(target=self._sleep, args=(conn,), daemon=True)
                thread.start()
                self.threads.append(thread)
            else:
                conn.execute("SELECT 1")
        wait_until(lambda: cluster.execute(
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND wait_event = 'PgSleep'")[0][0]
            == sum(1 for *_, state in spec if state == "active"), "the sleeping sessions")

    @staticmethod
    def _sleep(conn) -> None:
        try:
            conn.execute("SELECT pg_sleep(60)")
        except psycopg.errors.QueryCanceled:
            pass

    def close(self) -> None:
        for conn in self.conns:
            conn.cancel()
        for thread in self.threads:
            thread.join(timeout=30)
        for conn in self.conns:
            conn.close()


def activity_series(samples, db: str) -> dict[tuple, float]:
    """pg_stat_activity_count of `db` with sessions in it, by the label values in ACTIVITY_LABELS' order."""
    return {tuple(s.labels[k] for k in ACTIVITY_LABELS): s.value
            for s in find(samples, "pg_stat_activity_count", datname=db) if s.value}


def summed_by_database_and_state(samples) -> dict[tuple[str, str], float]:
    summed: dict[tuple[str, str], float] = {}
    for s in find(samples, "pg_stat_activity_count"):
        key = (s.labels["datname"], s.labels["state"])
        summed[key] = summed.get(key, 0) + s.value
    return summed


@pytest.fixture
def session_roles(cluster):
    ensure_session_roles(cluster)
    return SESSION_ROLES


@pytest.mark.parametrize("role", ROLES)
def test_sessions_by_postgres_exporter_020_labels_sum_to_database_and_state(cluster, fresh_db, session_roles, role):
    """pg_stat_activity_count carries postgres_exporter 0.20's labels (collector/pg_stat_activity.go:
    datname, state, usename, application_name, backend_type, wait_event_type, wait_event), each label
    set's count is the view's, and a sum by (datname, state) is the old series."""
    db = fresh_db.rsplit("/", 1)[1]
    alice, bob = session_roles
    sessions = Sessions(cluster, db, [(alice, "web", "idle"), (alice, "web", "idle"), (alice, "web", "active"),
                                      (bob, "web", "idle in transaction"), (bob, "batch", "idle"),
                                      ("postgres", "", "idle"), ("postgres", "psql", "active")])
    try:
        samples = scrape(cluster, "postgres", role)  # pgvigil's own session is not in db
        old = dict(((datname, state), count) for datname, state, count in cluster.execute(OLD_ACTIVITY_SQL))
        view = {tuple(row[:7]): row[7] for row in cluster.execute(
            "SELECT datname, state, usename, application_name, backend_type, coalesce(wait_event_type, ''),"
            f" coalesce(wait_event, ''), count(*) FROM pg_stat_activity WHERE datname = '{db}'"
            " GROUP BY 1, 2, 3, 4, 5, 6, 7")}
    finally:
        sessions.close()
    assert {tuple(sorted(s.labels)) for s in find(samples, "pg_stat_activity_count")} == \
        {tuple(sorted(ACTIVITY_LABELS + ("target",)))}
    assert activity_series(samples, db) == view
    assert activity_series(samples, db)[(db, "idle", alice, "web", "client backend", "Client", "ClientRead")] == 2
    summed = summed_by_database_and_state(samples)
    assert {key: summed[key] for key in old if key[0] == db} == {key: v for key, v in old.items() if key[0] == db}
    assert {key: summed[key] for key in old if key[0] == db}[db, "active"] == 2
    assert set(summed) == set(old)  # every (database, state) pair, none added
    # an empty pair: one series, its other labels empty, 0
    [empty] = find(samples, "pg_stat_activity_count", datname=db, state="disabled")
    assert empty.value == 0 and all(empty.labels[k] == "" for k in ACTIVITY_LABELS[2:])
    [longest] = find(samples, "pg_stat_activity_max_tx_duration", datname=db, state="idle in transaction")
    assert longest.value > 0 and longest.labels["usename"] == bob


def test_sessions_past_the_top_applications_count_as_other(cluster, fresh_db):
    """Application names past the 20 with most sessions are folded into "other"; the sums stay."""
    db = fresh_db.rsplit("/", 1)[1]
    spec = [("postgres", "busy", "idle")] * 3 + [("postgres", f"app{i:02d}", "idle") for i in range(25)]
    sessions = Sessions(cluster, db, spec)
    try:
        samples = scrape(cluster, db, "monitor")
        old = dict(((datname, state), count) for datname, state, count in cluster.execute(OLD_ACTIVITY_SQL))
    finally:
        sessions.close()
    applications = {s.labels["application_name"] for s in find(samples, "pg_stat_activity_count") if s.value}
    assert "busy" in applications and "other" in applications
    assert len(applications - {"other"}) == 20
    summed = summed_by_database_and_state(samples)
    assert summed[db, "idle"] == old[db, "idle"] == 28


def test_sessions_past_the_label_set_bound_keep_their_sums(cluster, fresh_db, session_roles):
    """The query's bounds, lowered so a handful of sessions exceed them (1 application, 2 label sets),
    fold the rest of each (database, state) into one series labelled "other" and keep every sum."""
    [query] = [q for q in parse_config("collectors: [connections]\n").queries if q.name == "pg_stat_activity"]
    assert query.sql.count("LIMIT 20") == 1 and query.sql.count("1000") == 2
    lowered = query.sql.replace("LIMIT 20", "LIMIT 1").replace("1000", "2")
    db = fresh_db.rsplit("/", 1)[1]
    alice, bob = session_roles
    sessions = Sessions(cluster, db, [(alice, "web", "idle")] * 3 + [(alice, "batch", "idle"), (bob, "web", "idle"),
                                      (bob, "report", "idle in transaction"), ("postgres", "psql", "idle")])
    try:
        rows = cluster.execute(lowered)
        old = dict(((datname, state), count) for datname, state, count in cluster.execute(OLD_ACTIVITY_SQL))
    finally:
        sessions.close()
    busy = {tuple(row[:7]): row[7] for row in rows if row[7]}
    folded = ("other",) * 5
    assert busy[(db, "idle", alice, "web", "client backend", "Client", "ClientRead")] == 3  # the most sessions
    assert busy[(db, "idle in transaction") + folded] == 1
    assert busy[(db, "idle") + folded] >= 1
    assert len([key for key in busy if key[2:] != folded]) <= 2  # two label sets kept, cluster-wide
    assert {key[3] for key in busy} <= {"web", "other"}  # one application name kept
    summed: dict[tuple[str, str], int] = {}
    for row in rows:
        summed[row[0], row[1]] = summed.get((row[0], row[1]), 0) + row[7]
    assert {key: summed[key] for key in old if key[0] == db} == {key: v for key, v in old.items() if key[0] == db}


def test_connections_per_user_and_client(result):
    _, samples = result
    assert value(samples, "pg_stat_activity_by_user_count", usename="postgres") >= 2
    assert value(samples, "pg_stat_activity_by_client_count", client_addr="127.0.0.1") >= 2


# -- statements --------------------------------------------------------------

def test_slow_statement_in_top_n_mean_max_and_histogram(cluster, result):
    db, samples = result
    queryid = cluster.execute(
        "SELECT queryid::text FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        f" WHERE d.datname = '{db}' AND s.query LIKE 'SELECT pg_sleep%'")[0][0]
    statement = {"user": "postgres", "datname": db, "queryid": queryid}
    assert value(samples, "pg_stat_statements_calls_total", **statement) == SLEEP_CALLS
    assert value(samples, "pg_stat_statements_rows_total", **statement) == SLEEP_CALLS
    assert value(samples, "pg_stat_statements_seconds_total", **statement) >= SLEEP_SECONDS * SLEEP_CALLS
    assert value(samples, "pg_stat_statements_mean_seconds_max", datname=db) >= SLEEP_SECONDS
    between = (value(samples, "pg_stat_statements_mean_time_seconds_bucket", le="0.25")
               - value(samples, "pg_stat_statements_mean_time_seconds_bucket", le="0.1"))
    assert between >= 1


# -- database ----------------------------------------------------------------

def test_database_counters(cluster, result, server_version):
    db, samples = result
    datid = str(cluster.execute(f"SELECT oid FROM pg_database WHERE datname = '{db}'")[0][0])
    stat = {"datid": datid, "datname": db}
    assert value(samples, "pg_stat_database_deadlocks", **stat) == 1
    assert value(samples, "pg_stat_database_xact_rollback", **stat) >= 2  # the deadlock victim and the holder's peer
    assert value(samples, "pg_stat_database_temp_files", **stat) >= 1
    assert value(samples, "pg_stat_database_temp_bytes", **stat) > 0
    assert value(samples, "pg_stat_database_tup_deleted", **stat) >= DEAD_TUPLES
    assert value(samples, "pg_stat_database_xact_commit", **stat) > 0
    assert value(samples, "pg_stat_database_blks_hit", **stat) > 0
    assert value(samples, "pg_stat_database_numbackends", **stat) >= 2
    assert value(samples, "pg_database_size_bytes", datname=db) > 0
    assert value(samples, "pg_database_frozen_xid_age", datname=db) >= 0
    assert find(samples, "pg_database_size_bytes", datname="template0") == []
    if server_version < 140000:  # session statistics came with PostgreSQL 14
        assert find(samples, "pg_stat_database_sessions_total") == []
        return
    assert value(samples, "pg_stat_database_sessions_killed_total", **stat) == 1
    assert value(samples, "pg_stat_database_sessions_total", **stat) >= 5
    assert value(samples, "pg_stat_database_active_time_seconds_total", **stat) >= SLEEP_SECONDS * SLEEP_CALLS


# -- security ----------------------------------------------------------------

def test_tables_without_row_level_security(result):
    db, samples = result
    assert value(samples, "pg_security_tables_without_rls", datname=db, schemaname="public") == len(TABLES_WITHOUT_RLS)
    flagged = {s.labels["relname"] for s in find(samples, "pg_security_table_rls_disabled", datname=db)}
    assert flagged == TABLES_WITHOUT_RLS  # `secured` has RLS enabled


def test_role_counts(cluster, result):
    _, samples = result
    supers, logins = cluster.execute(
        "SELECT count(*) FILTER (WHERE rolsuper), count(*) FILTER (WHERE rolcanlogin) FROM pg_roles")[0]
    assert value(samples, "pg_roles_superuser_count") == supers
    assert value(samples, "pg_roles_login_count") == logins >= 2


# -- server, settings, replication, archiving --------------------------------

def test_settings_in_base_units(cluster, result, server_version):
    _, samples = result
    assert value(samples, "pg_settings_max_connections") == 200  # set by the test cluster
    assert value(samples, "pg_settings_superuser_reserved_connections") == 3
    assert value(samples, "pg_settings_max_locks_per_transaction") == 64
    assert value(samples, "pg_settings_autovacuum") == 1
    assert value(samples, "pg_settings_autovacuum_naptime_seconds") == 60
    assert value(samples, "pg_settings_autovacuum_vacuum_cost_delay_seconds") == pytest.approx(0.002)
    shared = cluster.execute("SELECT pg_size_bytes(current_setting('shared_buffers'))")[0][0]
    assert value(samples, "pg_settings_shared_buffers_bytes") == shared
    if server_version >= 160000:
        assert value(samples, "pg_settings_reserved_connections") == 0
    else:
        assert find(samples, "pg_settings_reserved_connections") == []  # PG 16+ only


def test_postmaster_start_time(cluster, result):
    _, samples = result
    started = cluster.execute("SELECT extract(epoch FROM pg_postmaster_start_time())")[0][0]
    assert value(samples, "pg_postmaster_start_time_seconds") == pytest.approx(float(started))


def test_primary_replication_and_slot(result):
    _, samples = result
    assert value(samples, "pg_replication_is_replica") == 0
    assert value(samples, "pg_replication_lag_seconds") == 0
    slot = {"slot_name": "pgvigil_test_slot", "database": ""}
    assert value(samples, "pg_replication_slots_active", **slot) == 0
    assert value(samples, "pg_replication_slots_retained_bytes", **slot) > 0
    assert find(samples, "pg_stat_replication_pg_wal_lsn_diff") == []
    # postgres_exporter 0.20's names (collector/pg_replication_slots.go) and the names before 0.20
    physical = {"slot_name": "pgvigil_test_slot", "slot_type": "physical"}
    for prefix in ("pg_replication_slots_", "pg_replication_slot_"):
        assert value(samples, prefix + "slot_is_active", **physical) == 0
        assert value(samples, prefix + "slot_current_wal_lsn", **physical) > 0
        assert find(samples, prefix + "slot_confirmed_flush_lsn", **physical) == []  # inactive: none
        assert value(samples, prefix + "wal_status", wal_status="reserved", **physical) == 1
    assert value(samples, "pg_replication_slots_slot_current_wal_lsn", **physical) == \
        value(samples, "pg_replication_slot_slot_current_wal_lsn", **physical)


def test_archiver_and_checkpoints(result):
    _, samples = result
    assert value(samples, "pg_stat_archiver_archived_count") == 0  # archive_mode is off here
    assert find(samples, "pg_stat_archiver_last_archive_age") == []
    assert value(samples, "pg_stat_bgwriter_checkpoints_req_total") >= 1
    assert value(samples, "pg_stat_bgwriter_buffers_alloc_total") > 0


# -- scope and bounds --------------------------------------------------------

def test_cluster_queries_run_once_per_server_and_database_queries_per_target(cluster, fresh_db):
    other = "t_other_" + uuid.uuid4().hex[:8]
    other_dsn = cluster.create_database(other)
    try:
        for dsn in (fresh_db, other_dsn):
            cluster.execute("CREATE TABLE here (id int)", dsn.rsplit("/", 1)[1])
        config = parse_config(f"targets:\n  a:\n    dsn: {fresh_db}\n  b:\n    dsn: {other_dsn}\n")
        samples = parse_samples(scrape_once(config))
        assert {s.labels["target"] for s in find(samples, "pg_settings_max_connections")} == {"a"}
        assert len(find(samples, "pg_stat_activity_count", datname=other, state="idle")) == 1
        tables = find(samples, "pg_stat_user_tables_n_live_tup", relname="here")
        assert sorted((s.labels["target"], s.labels["datname"]) for s in tables) == [
            ("a", fresh_db.rsplit("/", 1)[1]), ("b", other)]
    finally:
        cluster.execute(f'DROP DATABASE "{other}" WITH (FORCE)')


def test_per_table_series_are_bounded_yet_keep_dead_tuples(cluster, fresh_db):
    db = fresh_db.rsplit("/", 1)[1]
    cluster.execute("DO $$ BEGIN FOR i IN 1..260 LOOP "
                    "EXECUTE format('CREATE TABLE wide_%s (id int PRIMARY KEY); INSERT INTO wide_%s VALUES (1)', i, i);"
                    " END LOOP; END $$", db)
    # the smallest table of all (one heap page, no index), but the only one with dead tuples
    cluster.execute("CREATE TABLE tiny (id int) WITH (autovacuum_enabled = false)", db)
    cluster.execute("INSERT INTO tiny VALUES (1); DELETE FROM tiny", db)
    wait_until(lambda: cluster.execute(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'tiny'", db)[0][0] == 1, "dead tuples in tiny")
    samples = scrape(cluster, db, "monitor", collectors="[tables, indexes, security]")
    assert value(samples, "pg_up") == 1
    reported = {s.labels["relname"] for s in find(samples, "pg_stat_user_tables_n_live_tup")}
    assert len(reported) <= 200 and "tiny" in reported
    assert len(find(samples, "pg_statio_user_tables_heap_blocks_hit")) == len(reported)
    assert len(find(samples, "pg_stat_user_indexes_idx_scan")) == 200
    assert len(find(samples, "pg_security_table_rls_disabled")) == 200
    assert value(samples, "pg_security_tables_without_rls", schemaname="public") == 261
    assert [s for s in find(samples, "pgvigil_query_errors_total") if s.value] == []
