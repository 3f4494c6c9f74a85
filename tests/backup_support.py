"""Helpers shared by the tests/test_backup*.py files (not a test module)."""
from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.backup.metrics import BackupStateCollector

SEED_SQL = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 1200) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers, total numeric);
INSERT INTO orders (customer_id, total) SELECT 1 + g % 1200, g * 1.5 FROM generate_series(1, 3000) g;
CREATE SCHEMA "Sales Data";
CREATE TABLE "Sales Data"."Quarterly Totals" (q int, amount numeric);
INSERT INTO "Sales Data"."Quarterly Totals" VALUES (1, 10), (2, 20), (3, 30);
CREATE TABLE empty_table (x int);
CREATE TABLE events (at date NOT NULL, kind text) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO events SELECT date '2024-06-01' + g, 'k' FROM generate_series(0, 399) g;
ANALYZE;
"""

EXPECTED_ROWS = {
    ("public", "customers"): 1200,
    ("public", "orders"): 3000,
    ("Sales Data", "Quarterly Totals"): 3,
    ("public", "empty_table"): 0,
    ("public", "events_2024"): 214,
    ("public", "events_2025"): 186,
}


def dbname_of(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def backup_metrics(directory: Path, target: str) -> dict[str, float]:
    """Render the collector like the exporter does, parse it back: sample name -> value for the target."""
    registry = CollectorRegistry()
    registry.register(BackupStateCollector(directory, target))
    text = generate_latest(registry).decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels == {"target": target}, sample
            values[sample.name] = sample.value
    return values


def wait_for_blocked_pg_dump(cluster, dbname: str, timeout: float = 30.0) -> None:
    """Until pg_dump (connected to dbname) waits on a table lock that the test holds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                               f"AND datname = '{dbname}' AND wait_event_type = 'Lock'")
        if rows[0][0]:
            return
        time.sleep(0.05)
    raise AssertionError("pg_dump never blocked on the held lock")


def hold_lock(cluster, dbname: str, table: str):
    """An open transaction holding ACCESS EXCLUSIVE on table; close the returned connection to release."""
    import psycopg

    conn = psycopg.connect(cluster.dsn(dbname))
    with conn.cursor() as cur:
        cur.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    return conn
