"""Version predicates pick the right SQL for PostgreSQL 12 through 17 (only 15 runs here)."""
from __future__ import annotations

import pytest

from exporter.config import QuerySpec, parse_config

VERSIONS = (120000, 130000, 140000, 150000, 160000, 170000)


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
    assert not any(m.name == "pg_stat_bgwriter_buffers_backend_total" for q in running(queries, 170000) for m in q.metrics)


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


def test_every_version_exposes_the_same_metrics_apart_from_documented_ones(queries):
    def names(version):
        return {m.name for q in running(queries, version) for m in q.metrics}
    reference = names(150000)
    for version in VERSIONS:
        allowed = ({"pg_stat_bgwriter_buffers_backend_total"} | BACKEND_WRITES
                   | (SESSION_METRICS | SESSION_METRICS_011 if version < 140000 else set())
                   | ({"pg_stat_database_conflicts_confl_active_logicalslot"} if version >= 160000 else set()))
        assert names(version) ^ reference <= allowed, version


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
