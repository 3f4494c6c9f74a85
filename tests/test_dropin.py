"""pgvigil as a drop-in for postgres_exporter: both scrape the same primary (with a streaming
standby, so the replication series exist), the standby, and a server of each supported major, and
every series name postgres_exporter exports by default must come out of pgvigil's default packs
with the same type and label names, apart from the short list in docs/postgres_exporter.md, which
this test reads. Settings must also agree in value: that is what proves the unit conversions.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

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


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, tuple[Series, Series]]]:
    """postgres_exporter's and pgvigil's series on a primary and on its streaming standby."""
    if POSTGRES_EXPORTER is None:
        pytest.skip("postgres_exporter not installed (scripts/test.sh installs it)")
    with ThrowawayCluster(settings={"max_connections": "200"}) as primary:
        primary.create_database("dropin")
        standby = ThrowawayCluster.standby_of(primary, "dropin_standby")
        try:
            wait_streaming(primary)
            yield {role: (series_by_name(scrape_postgres_exporter(server.dsn("dropin")), own_label="server"),
                          series_by_name(scrape_pgvigil(server.dsn("dropin")), own_label="target"))
                   for role, server in (("primary", primary), ("standby", standby))}
        finally:
            standby.cleanup()


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


# The default collectors of postgres_exporter's current releases (0.15 to 0.17, read from its
# collector/*.go), which the Debian 0.11 above predates: name -> label names on PostgreSQL 15.
# Per-table series appear only where tables exist, slot series only where slots do, so these are
# checked against the default packs' declarations rather than a scrape.
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


def test_current_release_default_names_are_declared():
    declared = {m.name: q.labels for q in parse_config("collectors: [default]\n").queries
                if q.runs_on_version(150000) for m in q.metrics}
    excluded = documented("Not exported")
    missing = sorted(n for n in CURRENT_RELEASE if n not in declared and n not in excluded)
    assert missing == []
    differ = {n: (labels, declared[n]) for n, labels in CURRENT_RELEASE.items()
              if n in declared and set(labels) != set(declared[n])}
    assert differ == {}


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
