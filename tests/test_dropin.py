"""pgvigil as a drop-in for postgres_exporter: both scrape the same primary (with a streaming
standby, so the replication series exist), the standby, and a server of each supported major, and
every series name postgres_exporter exports by default must come out of pgvigil's default packs
with the same type and label names, apart from the short list in docs/postgres_exporter.md, which
this test reads. Settings must also agree in value: that is what proves the unit conversions.

The Debian postgres_exporter is 0.11; what 0.20 added or renamed (read from its source) is checked
against the cluster's own views instead: names, types, labels and values.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from exporter.config import parse_config
from exporter.dev.throwaway import ThrowawayCluster, free_port
from exporter.server import start_server

POSTGRES_EXPORTER = shutil.which("prometheus-postgres-exporter") or shutil.which("postgres_exporter")

DOC = Path(__file__).resolve().parent.parent / "docs" / "postgres_exporter.md"

# Settings whose value depends on the client session, not the server: lib/pq asks for
# extra_float_digits=2; pgvigil's sessions start read-only with their own idle timeout, and the
# read-only state of the current transaction is the session's (on a standby always on).
SESSION_SETTINGS = {
    "pg_settings_extra_float_digits",
    "pg_settings_default_transaction_read_only",
    "pg_settings_transaction_read_only",
    "pg_settings_idle_in_transaction_session_timeout_seconds",
}

Series = dict[str, tuple[str, frozenset[str], dict[frozenset, float]]]


def documented(section: str) -> dict[str, str]:
    """First-column names of the table under `## <section>` in the doc -> the rest of the row."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|(.*)\|$", body, re.MULTILINE)
    assert rows, f"{DOC}: no table rows under '## {section}'"
    return {name: rest for name, rest in rows}


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')
_SUFFIXES = ("_total", "_sum", "_count", "_bucket")


def series_by_name(text: str, own_label: str) -> Series:
    """Sample name as sent -> (type, label names without the exporter's own label, {labels: value}).

    Read by hand because prometheus_client's parser renames counter samples (x becomes x_total),
    which would hide exactly the differences this test looks for."""
    types: dict[str, str] = {}
    out: Series = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        if line.startswith("#") or not match:
            continue
        name, body, value = match.groups()
        labels = frozenset((k, v) for k, v in _LABEL.findall(body or "") if k != own_label)
        family = next((name[:-len(s)] for s in _SUFFIXES if name.endswith(s) and name[:-len(s)] in types), name)
        kind, names, values = out.setdefault(name, (types.get(family, "untyped"), frozenset(k for k, _ in labels), {}))
        assert names == frozenset(k for k, _ in labels), f"{name}: label names vary between samples"
        values[labels] = float(value)
    return out


def get(url: str) -> str:
    request = urllib.request.Request(url, headers={"X-Prometheus-Scrape-Timeout-Seconds": "20"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def scrape_postgres_exporter(dsn: str) -> str:
    assert POSTGRES_EXPORTER is not None
    port = free_port()
    env = dict(os.environ, DATA_SOURCE_NAME=dsn + "?sslmode=disable")
    proc = subprocess.Popen([POSTGRES_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                return get(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def scrape_pgvigil(dsn: str, collectors: str = "default") -> str:
    config = f"collectors: [{collectors}]\ntargets:\n  db:\n    dsn: {dsn}\n"
    handle = start_server(parse_config(config, source="dropin.yaml"))
    try:
        return get(handle.url + "/metrics")
    finally:
        handle.stop()


def wait_streaming(primary: ThrowawayCluster) -> None:
    deadline = time.monotonic() + 30
    while not primary.execute("SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'"):
        assert time.monotonic() < deadline, "standby never started streaming"
        time.sleep(0.2)


# Sessions held in their own database while both exporters scrape (they connect to "dropin"):
# (user, application_name, idle in a transaction?) - several users, applications and states.
SESSIONS_DB = "sessions"
SESSIONS = [("alice", "web", False), ("alice", "web", False), ("alice", "web", True), ("bob", "web", False),
            ("bob", "batch", True), ("carol", "report", False), ("carol", "", False)]


@pytest.fixture(scope="module")
def cluster_pair() -> Iterator[tuple[ThrowawayCluster, ThrowawayCluster]]:
    """A primary (a table with an index in "dropin", the sessions above, a WAL size limit so slots have a
    safe_wal_size) and its streaming standby."""
    if POSTGRES_EXPORTER is None:
        pytest.skip("postgres_exporter not installed (scripts/test.sh installs it)")
    with ThrowawayCluster(settings={"max_connections": "200", "max_slot_wal_keep_size": "1GB"}) as primary:
        primary.create_database("dropin")
        primary.execute("CREATE TABLE sized (id int PRIMARY KEY, v text);"
                        "INSERT INTO sized SELECT g, repeat('v', 300) FROM generate_series(1, 2000) g", "dropin")
        primary.create_database(SESSIONS_DB)
        primary.execute("CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN")
        standby = ThrowawayCluster.standby_of(primary, "dropin_standby")
        sessions = []
        try:
            for user, application, in_transaction in SESSIONS:
                conn = psycopg.connect(primary.dsn(SESSIONS_DB, user=user), application_name=application,
                                       autocommit=not in_transaction)
                conn.execute("SELECT 1")
                sessions.append(conn)
            wait_streaming(primary)
            yield primary, standby
        finally:
            for conn in sessions:
                conn.close()
            standby.cleanup()


@pytest.fixture(scope="module")
def servers(cluster_pair) -> dict[str, tuple[Series, Series]]:
    """postgres_exporter's and pgvigil's series on a primary and on its streaming standby."""
    return {role: (series_by_name(scrape_postgres_exporter(server.dsn("dropin")), own_label="server"),
                   series_by_name(scrape_pgvigil(server.dsn("dropin")), own_label="target"))
            for role, server in zip(("primary", "standby"), cluster_pair)}


@pytest.fixture(params=["primary", "standby"])
def scrapes(request, servers) -> tuple[Series, Series]:
    return servers[request.param]


def compared(theirs: Series) -> list[str]:
    """postgres_exporter's series names that pgvigil must answer: all but the documented exclusions."""
    excluded = documented("Not exported")
    prefixes = tuple(name[:-1] for name in excluded if name.endswith("*"))
    return sorted(n for n in theirs if n not in excluded and not n.startswith(prefixes))


def test_absent_instead_of_nan_only_where_documented(scrapes):
    """pgvigil leaves out a series whose value is unknown (NULL) where postgres_exporter sends NaN."""
    theirs, ours = scrapes
    allowed = documented("Absent instead of NaN")
    for name in allowed:
        assert name in theirs and all(math.isnan(v) for v in theirs[name][2].values()), name
        assert name not in ours, name


def test_every_default_postgres_exporter_name_is_exported(scrapes):
    theirs, ours = scrapes
    names = compared(theirs)
    assert len(names) > 300  # settings, statistics, replication: a real comparison, not an empty one
    nan_only = documented("Absent instead of NaN")
    assert [n for n in names if n not in ours and n not in nan_only] == []


def type_differences(theirs: Series, ours: Series) -> dict[str, tuple[str, str]]:
    """Names whose types differ; postgres_exporter's untyped series (columns it had no map for)
    may be anything, PromQL treats all types alike."""
    return {n: (theirs[n][0], ours[n][0]) for n in compared(theirs)
            if n in ours and theirs[n][0] not in (ours[n][0], "untyped")}


def test_types_match(scrapes):
    assert type_differences(*scrapes) == {}


def test_label_names_match_except_documented(scrapes):
    theirs, ours = scrapes
    allowed = documented("Label differences")
    differ = {n: (sorted(theirs[n][1]), sorted(ours[n][1])) for n in compared(theirs)
              if n in ours and theirs[n][1] != ours[n][1]}
    assert set(differ) <= set(allowed)


def test_documented_label_differences_are_real(servers):
    theirs, ours = servers["primary"]
    for name in documented("Label differences"):
        assert theirs[name][1] != ours[name][1], name


def test_settings_agree_in_value(scrapes):
    """Same names is not enough: the unit conversions must give the same numbers."""
    theirs, ours = scrapes
    settings = [n for n in compared(theirs) if n.startswith("pg_settings_") and n not in SESSION_SETTINGS]
    assert len(settings) > 200
    differ = {}
    for name in settings:
        (mine,), (other,) = ours[name][2].values(), theirs[name][2].values()
        if not math.isclose(mine, other, rel_tol=1e-9):
            differ[name] = (mine, other)
    assert differ == {}


def test_database_rows_differ_only_as_documented(servers):
    """postgres_exporter also reports the shared-objects row (datid 0, datname "") and template sizes."""
    theirs, ours = servers["primary"]
    for name in ("pg_stat_database_xact_commit", "pg_stat_database_conflicts_confl_lock"):
        extra = set(theirs[name][2]) - set(ours[name][2])
        assert {dict(labels)["datid"] for labels in extra} <= {"0"}, name
    sizes = {dict(labels)["datname"] for labels in set(theirs["pg_database_size_bytes"][2])
             - set(ours["pg_database_size_bytes"][2])}
    assert sizes == {"template0", "template1"}


# The default collectors of postgres_exporter's later releases (0.15 to 0.20, read from its
# collector/*.go), which the Debian 0.11 above predates: name -> label names on PostgreSQL 15.
# Per-table series appear only where tables exist, slot series only where slots do, so these are
# checked against the default packs' declarations rather than a scrape (and RELEASE_020's below
# against a live cluster's views too).
_STAT_DATABASE = ("numbackends", "xact_commit", "xact_rollback", "blks_read", "blks_hit", "tup_returned",
                  "tup_fetched", "tup_inserted", "tup_updated", "tup_deleted", "conflicts", "temp_files",
                  "temp_bytes", "deadlocks", "blk_read_time", "blk_write_time", "stats_reset",
                  "active_time_seconds_total")
_BGWRITER = ("checkpoints_timed", "checkpoints_req", "checkpoint_write_time", "checkpoint_sync_time",
             "buffers_checkpoint", "buffers_clean", "maxwritten_clean", "buffers_backend",
             "buffers_backend_fsync", "buffers_alloc", "stats_reset")
_USER_TABLES = ("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins", "n_tup_upd", "n_tup_del",
                "n_tup_hot_upd", "n_live_tup", "n_dead_tup", "n_mod_since_analyze", "last_vacuum",
                "last_autovacuum", "last_analyze", "last_autoanalyze", "vacuum_count", "autovacuum_count",
                "analyze_count", "autoanalyze_count", "index_size_bytes", "table_size_bytes")
_STATIO = ("heap_blocks_read", "heap_blocks_hit", "idx_blocks_read", "idx_blocks_hit", "toast_blocks_read",
           "toast_blocks_hit", "tidx_blocks_read", "tidx_blocks_hit")
_SLOT = ("slot_name", "slot_type")
_TABLE = ("datname", "schemaname", "relname")
CURRENT_RELEASE: dict[str, tuple[str, ...]] = {
    "pg_database_size_bytes": ("datname",), "pg_database_connection_limit": ("datname",),
    "pg_locks_count": ("datname", "mode"),
    "pg_replication_lag_seconds": (), "pg_replication_is_replica": (), "pg_replication_last_replay_seconds": (),
    "pg_replication_slot_slot_current_wal_lsn": _SLOT, "pg_replication_slot_slot_confirmed_flush_lsn": _SLOT,
    "pg_replication_slot_slot_is_active": _SLOT, "pg_replication_slot_safe_wal_size_bytes": _SLOT,
    "pg_replication_slot_wal_status": _SLOT + ("wal_status",),
    "pg_roles_connection_limit": ("rolname",),
    "pg_wal_segments": (), "pg_wal_size_bytes": (),
    "pg_postmaster_start_time_seconds": (),
    **{f"pg_stat_bgwriter_{n}_total": () for n in _BGWRITER},
    **{f"pg_stat_database_{n}": ("datid", "datname") for n in _STAT_DATABASE},
    **{f"pg_stat_user_tables_{n}": _TABLE for n in _USER_TABLES},
    **{f"pg_statio_user_tables_{n}": _TABLE for n in _STATIO},
}

# What postgres_exporter 0.20.0 and 0.20.1 renamed or added, from their source
# (github.com/prometheus-community/postgres_exporter, tags v0.20.0 and v0.20.1): name -> (type, labels).
# - collector/pg_replication_slots.go: the replication_slot collector became replication_slots, and its
#   pg_replication_slot_{slot_current_wal_lsn, slot_confirmed_flush_lsn, slot_is_active,
#   safe_wal_size_bytes, wal_status} became pg_replication_slots_* (CHANGELOG 0.20.0); pgvigil serves both.
# - collector/pg_stat_activity.go: statActivityLabels adds usename, application_name, backend_type,
#   wait_event_type and wait_event to datname and state; the (database, state) pairs without sessions
#   stay, with those labels empty.
# - collector/pg_stat_replication.go (0.20.1): statReplicationLabels are application_name,
#   client_addr (client_addr::text, so 127.0.0.1/32) and state, plus slot_name joined from
#   pg_replication_slots on active_pid (0.11 put the WAL sender's pid there).
# - collector/pg_stat_user_tables.go: table_size_bytes (pg_table_size) and index_size_bytes
#   (pg_indexes_size) per table.
# - collector/pg_stat_progress_vacuum.go (off by default there, on in pgvigil): param6 and param7 of
#   pg_stat_get_progress_info('VACUUM') as max_dead_tuples and num_dead_tuples on every version
#   (max_dead_tuple_bytes and dead_tuple_bytes from PG 17).
_ACTIVITY = ("datname", "state", "usename", "application_name", "backend_type", "wait_event_type", "wait_event")
_REPLICA = ("application_name", "client_addr", "state", "slot_name")
_VACUUM = ("datname", "relname")
RELEASE_020: dict[str, tuple[str, tuple[str, ...]]] = {
    "pg_replication_slots_slot_current_wal_lsn": ("gauge", _SLOT),
    "pg_replication_slots_slot_confirmed_flush_lsn": ("gauge", _SLOT),
    "pg_replication_slots_slot_is_active": ("gauge", _SLOT),
    "pg_replication_slots_safe_wal_size_bytes": ("gauge", _SLOT),
    "pg_replication_slots_wal_status": ("gauge", _SLOT + ("wal_status",)),
    "pg_stat_activity_count": ("gauge", _ACTIVITY),
    "pg_stat_activity_max_tx_duration": ("gauge", _ACTIVITY),
    "pg_stat_replication_pg_current_wal_lsn_bytes": ("gauge", _REPLICA),
    "pg_stat_replication_pg_wal_lsn_diff": ("gauge", _REPLICA),
    "pg_stat_user_tables_table_size_bytes": ("gauge", _TABLE),
    "pg_stat_user_tables_index_size_bytes": ("gauge", _TABLE),
    "pg_stat_progress_vacuum_max_dead_tuples": ("gauge", _VACUUM),
    "pg_stat_progress_vacuum_num_dead_tuples": ("gauge", _VACUUM),
    **{f"pg_stat_progress_vacuum_{n}": ("gauge", _VACUUM)
       for n in ("heap_blks", "heap_blks_scanned", "heap_blks_vacuumed", "index_vacuums")},
    "pg_stat_progress_vacuum_phase": ("gauge", _VACUUM + ("phase",)),
}


def test_current_release_default_names_are_declared():
    declared = {m.name: q.labels for q in parse_config("collectors: [default]\n").queries
                if q.runs_on_version(150000) for m in q.metrics}
    excluded = documented("Not exported")
    missing = sorted(n for n in CURRENT_RELEASE if n not in declared and n not in excluded)
    assert missing == []
    differ = {n: (labels, declared[n]) for n, labels in CURRENT_RELEASE.items()
              if n in declared and set(labels) != set(declared[n])}
    assert differ == {}


@pytest.mark.parametrize("version", [130000, 150000, 170000, 180000])
def test_release_020_names_are_declared_on_every_major(version):
    declared = {m.name: (m.type.value, q.labels) for q in parse_config("collectors: [default]\n").queries
                if q.runs_on_version(version) for m in q.metrics}
    assert {n: declared.get(n) for n in RELEASE_020 if declared.get(n) != RELEASE_020[n]} == {}


def test_renamed_in_020_both_names_are_documented():
    renamed = documented("Renamed between releases")
    for name in ("slot_current_wal_lsn", "slot_confirmed_flush_lsn", "slot_is_active", "safe_wal_size_bytes",
                 "wal_status"):
        assert f"`pg_replication_slots_{name}` (0.20+)" in renamed[f"pg_replication_slot_{name}"]


@pytest.fixture(scope="module")
def release_020(cluster_pair) -> tuple[Series, dict[str, list[tuple]]]:
    """pgvigil's series on the primary, and the views they come from, read right after the scrape."""
    primary, _ = cluster_pair
    ours = series_by_name(scrape_pgvigil(primary.dsn("dropin")), own_label="target")
    views = {
        "slots": primary.execute("SELECT slot_name, slot_type, active, safe_wal_size, wal_status,"
                                 " pg_current_wal_lsn() - '0/0' FROM pg_replication_slots"),
        "replicas": primary.execute(
            "SELECT r.application_name, r.client_addr::text, r.state, s.slot_name::text"
            " FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid"),
        "sessions": primary.execute(
            "SELECT datname, state, usename, application_name, backend_type, coalesce(wait_event_type, ''),"
            f" coalesce(wait_event, ''), count(*) FROM pg_stat_activity WHERE datname = '{SESSIONS_DB}'"
            " GROUP BY 1, 2, 3, 4, 5, 6, 7"),
        "sizes": primary.execute("SELECT pg_table_size('sized'), pg_indexes_size('sized')", "dropin"),
    }
    return ours, views


def labelled(series: Series, name: str) -> dict[tuple, float]:
    """name's samples keyed by its label values in RELEASE_020's order."""
    _, labels = RELEASE_020[name]
    return {tuple(dict(key)[label] for label in labels): value for key, value in series[name][2].items()}


def test_release_020_names_types_and_labels_live(release_020):
    ours, _ = release_020
    live = {n for n in RELEASE_020 if not n.startswith("pg_stat_progress_vacuum_")}  # no VACUUM runs here
    assert {n: (ours[n][0], sorted(ours[n][1])) for n in live if n in ours} == \
        {n: (kind, sorted(labels)) for n, (kind, labels) in RELEASE_020.items() if n in live}


def test_release_020_slot_names_carry_the_views_values(release_020):
    ours, views = release_020
    [(slot, slot_type, active, safe_wal_size, wal_status, lsn_after)] = views["slots"]
    key = (slot, slot_type)
    assert (slot, active) == ("dropin_standby", True)
    assert labelled(ours, "pg_replication_slots_slot_is_active") == {key: 1}
    assert labelled(ours, "pg_replication_slots_wal_status") == {key + (wal_status,): 1}
    # max_slot_wal_keep_size (1GB) past the slot's segment: the same within a WAL segment of the view's
    assert safe_wal_size > 1024 ** 3 - 16 * 1024 ** 2
    assert abs(labelled(ours, "pg_replication_slots_safe_wal_size_bytes")[key] - safe_wal_size) <= 16 * 1024 ** 2
    assert 0 < labelled(ours, "pg_replication_slots_slot_current_wal_lsn")[key] <= float(lsn_after)
    assert labelled(ours, "pg_replication_slots_slot_confirmed_flush_lsn") == {key: 0}  # physical: none
    for name in ("slot_current_wal_lsn", "slot_confirmed_flush_lsn", "slot_is_active", "safe_wal_size_bytes",
                 "wal_status"):  # the names before 0.20, from the same row
        assert ours[f"pg_replication_slot_{name}"][1:] == ours[f"pg_replication_slots_{name}"][1:], name


def test_release_020_replica_labels_are_the_views(release_020):
    ours, views = release_020
    [replica] = views["replicas"]
    assert replica[1] == "127.0.0.1/32" and replica[3] == "dropin_standby"
    for name in ("pg_stat_replication_pg_current_wal_lsn_bytes", "pg_stat_replication_pg_wal_lsn_diff"):
        assert list(labelled(ours, name)) == [replica], name


def test_release_020_session_labels_are_the_views(release_020):
    ours, views = release_020
    served = {key: value for key, value in labelled(ours, "pg_stat_activity_count").items()
              if key[0] == SESSIONS_DB and value}
    assert served == {tuple(row[:7]): row[7] for row in views["sessions"]}
    assert {(key[2], key[3]) for key in served} == {(user, application) for user, application, _ in SESSIONS}


def test_release_020_sessions_sum_to_the_old_labels(servers):
    """sum by (datname, state) of the 0.20 series is what postgres_exporter 0.11 (datname, state) counts."""
    theirs, ours = servers["primary"]
    old = {(dict(k)["datname"], dict(k)["state"]): v for k, v in theirs["pg_stat_activity_count"][2].items()}
    summed: Counter = Counter()
    for key, value in ours["pg_stat_activity_count"][2].items():
        summed[dict(key)["datname"], dict(key)["state"]] += value
    sessions_db = {pair: value for pair, value in old.items() if pair[0] == SESSIONS_DB}
    assert sessions_db[SESSIONS_DB, "idle"] == 5 and sessions_db[SESSIONS_DB, "idle in transaction"] == 2
    assert {pair: summed[pair] for pair in sessions_db} == sessions_db
    assert set(summed) == set(old)  # the same (database, state) pairs, each present


def test_release_020_table_sizes_are_the_views(release_020):
    ours, views = release_020
    [(table_size, index_size)] = views["sizes"]
    key = ("dropin", "public", "sized")
    assert labelled(ours, "pg_stat_user_tables_table_size_bytes")[key] == table_size > 0
    assert labelled(ours, "pg_stat_user_tables_index_size_bytes")[key] == index_size > 0
    total = {tuple(dict(k)[label] for label in _TABLE): v for k, v in ours["pg_stat_user_tables_size_bytes"][2].items()}
    assert total[key] == table_size + index_size


def test_every_major(major_cluster):
    """Names, types and labels on each supported major, and the settings pack's names and units."""
    if POSTGRES_EXPORTER is None:
        pytest.skip("postgres_exporter not installed (scripts/test.sh installs it)")
    dsn = major_cluster.dsn()
    theirs = series_by_name(scrape_postgres_exporter(dsn), own_label="server")
    ours = series_by_name(scrape_pgvigil(dsn), own_label="target")
    names = compared(theirs)
    nan_only = documented("Absent instead of NaN")
    assert [n for n in names if n not in ours and n not in nan_only] == []
    assert type_differences(theirs, ours) == {}
    assert {n for n in names if n in ours and theirs[n][1] != ours[n][1]} <= set(documented("Label differences"))
    settings = [n for n in names if n.startswith("pg_settings_") and n not in SESSION_SETTINGS]
    assert len(settings) > 200
    differ = {n: (ours[n][2], theirs[n][2]) for n in settings
              if not math.isclose(*(next(iter(s[n][2].values())) for s in (ours, theirs)), rel_tol=1e-9)}
    assert differ == {}
