"""Version predicates pick the right SQL for PostgreSQL 12 through 18, and the live servers 13-18 agree.

The selection tests read the packs; the live tests run each version-bounded query on every supported
major (conftest's major_cluster) and prove the bounds are needed where a view or column changed.
"""
from __future__ import annotations

import psycopg
import pytest

from exporter.config import QuerySpec, parse_config

VERSIONS = (120000, 130000, 140000, 150000, 160000, 170000, 180000)


@pytest.fixture(scope="module")
def queries() -> tuple[QuerySpec, ...]:
    return parse_config("collectors: [default]\n").queries


def running(queries, version: int) -> list[QuerySpec]:
    return [q for q in queries if q.runs_on_version(version)]


def producer(queries, version: int, metric: str) -> QuerySpec:
    found = [q for q in running(queries, version) if any(m.name == metric for m in q.metrics)]
    assert len(found) == 1, f"{metric} on {version}: produced by {[q.name for q in found]}"
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_each_metric_has_exactly_one_query_per_version(queries, version):
    names = [m.name for q in running(queries, version) for m in q.metrics]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("version, query, present, absent", [
    (120000, "pg_stat_statements_pg12", "total_time", "total_exec_time"),
    (130000, "pg_stat_statements", "total_exec_time", "shared_blk_read_time"),
    (160000, "pg_stat_statements", "blk_read_time", "shared_blk_read_time"),
    (170000, "pg_stat_statements_pg17", "shared_blk_read_time", "s.blk_read_time"),
])
def test_statements_column_names_follow_the_version(queries, version, query, present, absent):
    chosen = producer(queries, version, "pg_stat_statements_seconds_total")
    assert chosen.name == query
    assert present in chosen.sql and absent not in chosen.sql


@pytest.mark.parametrize("version, column", [
    (120000, "mean_time"), (130000, "mean_exec_time"), (170000, "mean_exec_time"),
])
def test_statement_mean_time_column_follows_the_version(queries, version, column):
    for metric in ("pg_stat_statements_mean_seconds_max", "pg_stat_statements_mean_time_seconds"):
        sql = producer(queries, version, metric).sql
        assert f"s.{column}" in sql
        if column == "mean_time":
            assert "mean_exec_time" not in sql


@pytest.mark.parametrize("version, waitstart", [
    (120000, False), (130000, False), (140000, True), (150000, True), (170000, True),
])
def test_lock_wait_uses_waitstart_from_pg14(queries, version, waitstart):
    sql = producer(queries, version, "pg_locks_max_wait_seconds").sql
    assert ("waitstart" in sql) is waitstart


@pytest.mark.parametrize("version", VERSIONS)
def test_checkpoints_come_from_pg_stat_checkpointer_from_pg17(queries, version):
    sql = producer(queries, version, "pg_stat_bgwriter_checkpoints_timed_total").sql
    if version >= 170000:
        assert "pg_stat_checkpointer" in sql and "checkpoints_timed AS" not in sql
    else:
        assert "pg_stat_checkpointer" not in sql and "checkpoints_timed AS" in sql


def test_buffers_backend_is_gone_in_pg17(queries):
    assert any(m.name == "pg_stat_bgwriter_buffers_backend_total" for q in running(queries, 160000) for m in q.metrics)
    assert not any(m.name == "pg_stat_bgwriter_buffers_backend_total"
                   for q in running(queries, 170000) for m in q.metrics)


SESSION_METRICS = {f"pg_stat_database_{n}" for n in (
    "sessions_total", "sessions_abandoned_total", "sessions_fatal_total", "sessions_killed_total",
    "session_time_seconds_total", "active_time_seconds_total", "idle_in_transaction_time_seconds_total")}

# postgres_exporter 0.11's names of the session statistics (renamed pack), and the backend writes
# PG 17 dropped, under their 0.10 names too.
SESSION_METRICS_011 = {f"pg_stat_database_{n}" for n in (
    "sessions", "sessions_abandoned", "sessions_fatal", "sessions_killed",
    "session_time", "active_time", "idle_in_transaction_time")}
BACKEND_WRITES = {"pg_stat_bgwriter_buffers_backend_fsync_total", "pg_stat_bgwriter_buffers_backend",
                  "pg_stat_bgwriter_buffers_backend_fsync"}


def test_each_metric_exists_on_one_unbroken_range_of_versions(queries):
    """A metric may appear in one major and disappear in a later one, but never skip a major in between."""
    produced = {v: {m.name for q in running(queries, v) for m in q.metrics} for v in VERSIONS}
    gaps = {}
    for name in set().union(*produced.values()):
        present = [name in produced[v] for v in VERSIONS]
        first, last = present.index(True), len(present) - 1 - present[::-1].index(True)
        if not all(present[first:last + 1]):
            gaps[name] = [v for v, p in zip(VERSIONS, present) if p]
    assert gaps == {}


def test_metrics_gone_or_new_since_15_are_the_documented_ones(queries):
    def names(version):
        return {m.name for q in running(queries, version) for m in q.metrics}
    # 17 dropped buffers_backend and buffers_backend_fsync (the postgres_exporter names too): pg_stat_io has them
    assert names(150000) - names(170000) == {
        "pg_stat_bgwriter_buffers_backend_total", "pg_stat_bgwriter_buffers_backend_fsync_total",
        "pg_stat_bgwriter_buffers_backend", "pg_stat_bgwriter_buffers_backend_fsync"}
    assert SESSION_METRICS <= names(150000) - names(130000)


@pytest.mark.parametrize("version, present", [(120000, False), (130000, False), (140000, True), (170000, True)])
def test_session_statistics_from_pg14(queries, version, present):
    names = {m.name for q in running(queries, version) for m in q.metrics}
    assert (SESSION_METRICS <= names) is present and (SESSION_METRICS & names == set()) is not present


def test_version_specific_metric_keeps_its_type_across_variants(queries):
    types: dict[str, set[str]] = {}
    for q in queries:
        for m in q.metrics:
            types.setdefault(m.name, set()).add(m.type)
    assert {name: t for name, t in types.items() if len(t) > 1} == {}


# -- live: the bounds hold on real servers -------------------------------------

# Queries whose lower or upper bound exists because a view or column appeared, moved or was renamed:
# the variant must fail on the other side of its bound, or the bound is not what protects it.
NEEDED_BOUNDS = {
    "pg_stat_statements": "total_exec_time came in 13; 17 renamed blk_read_time to shared_blk_read_time",
    "pg_stat_statements_pg17": "shared_blk_read_time and local_blk_read_time are 17+",
    "pg_stat_bgwriter": "17 moved checkpoints_timed and buffers_backend out of pg_stat_bgwriter",
    "pg_stat_bgwriter_pg17": "pg_stat_checkpointer is 17+",
    "pg_stat_database_sessions": "session statistics are 14+",
    "pg_locks_waiting": "pg_locks.waitstart is 14+",
}


def run_as_monitor(cluster, sql: str) -> str | None:
    """None when `sql` runs as a pg_monitor-only role, else PostgreSQL's first error line."""
    cluster.execute("""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgvigil_versions') THEN
          CREATE ROLE pgvigil_versions LOGIN;
        END IF; END $$; GRANT pg_monitor TO pgvigil_versions""")
    conn = psycopg.connect(cluster.dsn(user="pgvigil_versions"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
        return None
    except psycopg.Error as exc:
        return str(exc).splitlines()[0]
    finally:
        conn.close()


def bounded(queries) -> list[QuerySpec]:
    return [q for q in queries if q.min_server_version is not None or q.max_server_version is not None]


def test_every_version_bounded_query_runs_live_within_its_range(queries, major, major_cluster):
    errors = {q.name: run_as_monitor(major_cluster, q.sql)
              for q in bounded(queries) if q.runs_on_version(major * 10000)}
    assert {name: error for name, error in errors.items() if error} == {}


def test_version_bounds_are_needed_live(queries, major, major_cluster):
    by_name = {q.name: q for q in bounded(queries)}
    assert set(NEEDED_BOUNDS) <= set(by_name)
    ran_outside = [name for name in NEEDED_BOUNDS if not by_name[name].runs_on_version(major * 10000)
                   and run_as_monitor(major_cluster, by_name[name].sql) is None]
    assert ran_outside == []
