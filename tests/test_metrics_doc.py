"""docs/metrics.md is generated from the packs and committed; it must match the generator."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.bundle.metrics_doc import MEASURED, render, source_views, version_range
from exporter.cli import main
from exporter.config import parse_config
from exporter.dev.measure import measure_default_scrape

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"

# The team contract: alerts and dashboards are written against these names.
CONTRACT = """
pg_postmaster_start_time_seconds pg_settings_max_connections pg_settings_superuser_reserved_connections
pg_settings_max_locks_per_transaction pg_settings_autovacuum pg_settings_autovacuum_naptime_seconds
pg_stat_activity_count pg_stat_activity_max_tx_duration pg_stat_activity_max_query_duration_seconds
pg_stat_activity_max_idle_in_transaction_seconds pg_stat_activity_waiting_count
pg_stat_activity_by_user_count pg_stat_activity_by_client_count pg_stat_activity_query_age_seconds
pg_locks_count pg_locks_blocked_sessions pg_locks_max_wait_seconds
pg_stat_statements_calls_total pg_stat_statements_seconds_total pg_stat_statements_rows_total
pg_stat_statements_mean_seconds_max pg_stat_statements_mean_time_seconds
pg_database_size_bytes pg_database_frozen_xid_age
pg_stat_database_numbackends pg_stat_database_xact_commit pg_stat_database_xact_rollback
pg_stat_database_blks_read pg_stat_database_blks_hit pg_stat_database_tup_returned pg_stat_database_tup_fetched
pg_stat_database_tup_inserted pg_stat_database_tup_updated pg_stat_database_tup_deleted pg_stat_database_conflicts
pg_stat_database_temp_files pg_stat_database_temp_bytes pg_stat_database_deadlocks
pg_stat_user_tables_seq_scan pg_stat_user_tables_seq_tup_read pg_stat_user_tables_idx_scan
pg_stat_user_tables_idx_tup_fetch pg_stat_user_tables_n_tup_ins pg_stat_user_tables_n_tup_upd
pg_stat_user_tables_n_tup_del pg_stat_user_tables_n_tup_hot_upd pg_stat_user_tables_n_live_tup
pg_stat_user_tables_n_dead_tup pg_stat_user_tables_n_mod_since_analyze pg_stat_user_tables_last_vacuum
pg_stat_user_tables_last_autovacuum pg_stat_user_tables_last_analyze pg_stat_user_tables_last_autoanalyze
pg_stat_user_tables_vacuum_count pg_stat_user_tables_autovacuum_count pg_stat_user_tables_analyze_count
pg_stat_user_tables_autoanalyze_count pg_stat_user_tables_size_bytes
pg_statio_user_tables_heap_blocks_read pg_statio_user_tables_heap_blocks_hit pg_statio_user_tables_idx_blocks_read
pg_statio_user_tables_idx_blocks_hit pg_statio_user_tables_toast_blocks_read pg_statio_user_tables_toast_blocks_hit
pg_statio_user_tables_tidx_blocks_read pg_statio_user_tables_tidx_blocks_hit
pg_stat_user_indexes_idx_scan pg_stat_user_indexes_size_bytes pg_index_unused pg_index_invalid
pg_replication_is_replica pg_replication_lag_seconds pg_stat_replication_pg_wal_lsn_diff
pg_replication_slots_active pg_replication_slots_retained_bytes
pg_stat_archiver_archived_count pg_stat_archiver_failed_count pg_stat_archiver_last_archive_age
pg_stat_archiver_last_failure_age
pg_security_tables_without_rls pg_security_table_rls_disabled pg_roles_superuser_count pg_roles_login_count
pg_vector_index_size_bytes pg_vector_index_scans_total pg_vector_index_tuples_read_total
""".split()

CONTRACT_LABELS = {
    # postgres_exporter 0.20's labels; a sum by (datname, state) is the series of earlier releases
    "pg_stat_activity_count": ("datname", "state", "usename", "application_name", "backend_type", "wait_event_type",
                               "wait_event"),
    "pg_stat_activity_max_tx_duration": ("datname", "state", "usename", "application_name", "backend_type",
                                         "wait_event_type", "wait_event"),
    "pg_locks_count": ("datname", "mode"),
    "pg_stat_statements_calls_total": ("user", "datname", "queryid"),
    "pg_stat_database_xact_commit": ("datid", "datname"),
    "pg_stat_user_tables_n_dead_tup": ("datname", "schemaname", "relname"),
    "pg_stat_user_indexes_idx_scan": ("datname", "schemaname", "relname", "indexrelname"),
    "pg_stat_replication_pg_wal_lsn_diff": ("application_name", "client_addr", "state", "slot_name"),
    "pg_replication_slots_active": ("slot_name", "database"),
    "pg_vector_index_size_bytes": ("datname", "schemaname", "relname", "indexrelname", "method"),
    "pg_security_tables_without_rls": ("datname", "schemaname"),
    "pg_stat_activity_by_client_count": ("client_addr",),
}


def test_committed_doc_matches_the_packs():
    assert DOC.read_text(encoding="utf-8") == render(), "regenerate: pgvigil metrics-doc --out docs/metrics.md"


def test_cli_writes_the_same_document(tmp_path):
    out = tmp_path / "metrics.md"
    result = CliRunner().invoke(main, ["metrics-doc", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == render()


def test_every_contract_metric_is_shipped_and_documented():
    shipped = {m.name for q in parse_config("collectors: [default]\n").queries for m in q.metrics}
    assert sorted(set(CONTRACT) - shipped) == []
    doc = render()
    assert [name for name in CONTRACT if f"| `{name}` |" not in doc] == []


@pytest.mark.parametrize("metric, labels", sorted(CONTRACT_LABELS.items()))
def test_contract_labels(metric, labels):
    queries = [q for q in parse_config("collectors: [default]\n").queries if any(m.name == metric for m in q.metrics)]
    assert queries and all(q.labels == labels for q in queries)


def test_doc_states_the_measured_series_count():
    doc = render()
    assert "5,000 tables" in doc and "**0 series**" not in doc


@pytest.mark.parametrize("spans, help_text, expected", [
    ([(None, None)], "", "13-18"),
    ([(140000, None)], "", "14-18"),
    ([(None, 139999)], "", "13"),
    ([(None, 129999), (130000, 169999), (170000, None)], "", "13-18 (per-version SQL)"),
    ([(None, 129999), (170000, None)], "", "17-18"),  # the PG 12 variant runs on no supported major
    ([(None, 139999), (170000, None)], "", "13, 17-18 (per-version SQL)"),
    ([(160000, 169999)], "", "16"),
    ([(None, None)], "Sets the planner's X. (PG 16+)", "16-18"),  # a generated setting's help
    ([(None, None)], "Enables per-database user names. (PG 13-16)", "13-16"),
])
def test_version_range(spans, help_text, expected):
    class Q:
        def __init__(self, low, high):
            self.min_server_version, self.max_server_version = low, high
    assert version_range([Q(low, high) for low, high in spans], help_text) == expected


def test_source_views_lead_with_the_statistics_view():
    sql = "WITH b AS (SELECT relation FROM pg_locks) SELECT * FROM pg_stat_user_tables t JOIN pg_class c ON true"
    assert source_views(sql) == ("pg_stat_user_tables", "pg_locks", "pg_class")
    assert source_views("SELECT pg_is_in_recovery()") == ("pg_is_in_recovery",)


def test_source_views_read_through_pg_catalog_qualifiers():
    sql = ("SELECT extract(epoch FROM pg_catalog.clock_timestamp() - a.query_start) "
           "FROM pg_catalog.pg_stat_activity a JOIN pg_database d ON d.oid = a.datid")
    assert source_views(sql) == ("pg_stat_activity", "pg_database")
    assert source_views("SELECT pg_catalog.count(*) FROM pg_catalog.pg_ls_waldir()") == ("pg_ls_waldir",)
    assert source_views("SELECT extract(epoch FROM pg_catalog.pg_postmaster_start_time())") == \
        ("pg_postmaster_start_time",)


def test_measured_series_count_still_holds():
    """Re-measure the documented 5,000-table scrape (its own cluster, a few seconds)."""
    measured = measure_default_scrape(MEASURED["tables"])
    assert measured["per_table_series"] == MEASURED["per_table_series"]
    assert measured["tables_reported"] == MEASURED["tables_reported"]
    # statements from the setup itself vary a little between runs
    assert abs(measured["series"] - MEASURED["series"]) <= 0.05 * MEASURED["series"], measured
