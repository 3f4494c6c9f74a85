"""The PgBouncer console's views: columns by name across releases, units, one-row-per-item answers.

These are pure functions on column names and rows; tests/test_pgbouncer.py runs them on a real PgBouncer."""
from __future__ import annotations

import decimal

import pytest

from exporter.config import CONSOLE_COMMANDS
from exporter.scrape.console import VIEWS, command_of, console_version, normalize


def test_every_allowed_command_has_a_view():
    assert set(VIEWS) == set(CONSOLE_COMMANDS)


@pytest.mark.parametrize("sql, command", [
    ("SHOW POOLS", "SHOW POOLS"), ("show  pools;", "SHOW POOLS"), ("  Show\nStats_Totals ;", "SHOW STATS_TOTALS"),
    ("SHOW POOLS; PAUSE", None), ("PAUSE", None), ("SHOW CLIENTS", None), ("SELECT 1", None), ("", None),
])
def test_only_allowed_commands_are_recognised(sql, command):
    assert command_of(sql) == command


@pytest.mark.parametrize("text, number", [("PgBouncer 1.18.0", 11800), ("PgBouncer 1.24.1", 12401),
                                          ("PgBouncer 1.7", 10700), ("unknown", 0)])
def test_console_version(text, number):
    assert console_version(text) == number


def test_columns_are_mapped_by_name_whatever_their_order_or_release():
    view = VIEWS["SHOW DATABASES"]
    # A later release: max_db_connections instead of max_connections, a new column, another order.
    columns = ["name", "host", "port", "database", "force_user", "pool_size", "min_pool_size", "reserve_pool",
               "server_lifetime", "pool_mode", "max_db_connections", "current_connections", "paused", "disabled"]
    row = ("app", "db1", 5432, "app", None, 20, 0, 5, 3600, "transaction", 50, 7, 0, 0)
    result = normalize(view, columns, [row])
    values = dict(zip(result.columns, result.rows[0]))
    assert values == {"name": "app", "host": "db1", "port": 5432, "database": "app", "force_user": None,
                      "pool_mode": "transaction", "pool_size": 20, "min_pool_size": 0, "reserve_pool": 5,
                      "max_connections": 50, "current_connections": 7, "paused": 0, "disabled": 0}


def test_missing_columns_are_null_and_times_are_seconds():
    view = VIEWS["SHOW STATS_TOTALS"]
    columns = ["database", "xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time", "query_time",
               "wait_time"]
    row = ("app", decimal.Decimal(3), decimal.Decimal(4), decimal.Decimal(10), decimal.Decimal(20),
           decimal.Decimal(2500000), decimal.Decimal(1500000), decimal.Decimal(250))
    values = dict(zip(*[normalize(view, columns, [row]).columns, normalize(view, columns, [row]).rows[0]]))
    assert values["query_count"] == 4 and values["xact_time"] == 2.5 and values["query_time"] == 1.5
    assert values["wait_time"] == 0.00025
    assert values["bind_count"] is None and values["requests"] is None


def test_maxwait_includes_its_microseconds():
    columns = ["database", "user", "cl_waiting", "maxwait", "maxwait_us"]
    result = normalize(VIEWS["SHOW POOLS"], columns, [("app", "u", 2, 3, 250000)])
    assert dict(zip(result.columns, result.rows[0]))["maxwait"] == 3.25


def test_one_row_per_item_becomes_one_row():
    lists = normalize(VIEWS["SHOW LISTS"], ["list", "items"], [("databases", 2), ("pools", 1), ("new_list", 9)])
    assert len(lists.rows) == 1
    values = dict(zip(lists.columns, lists.rows[0]))
    assert values["databases"] == 2 and values["pools"] == 1 and values["used_servers"] is None
    assert "new_list" not in values
    config = normalize(VIEWS["SHOW CONFIG"], ["key", "value", "default", "changeable"],
                       [("max_client_conn", "100", "100", "yes"), ("logfile", "/x.log", "", "yes")])
    assert dict(zip(config.columns, config.rows[0]))["max_client_conn"] == 100.0


def test_version_view_is_one_labelled_row():
    result = normalize(VIEWS["SHOW VERSION"], ["version"], [("PgBouncer 1.18.0",)])
    assert (result.columns, result.rows) == (["version", "info"], [("PgBouncer 1.18.0", 1)])
