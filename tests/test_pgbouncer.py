"""PgBouncer targets against a real pgbouncer (Debian's package) in front of the test cluster.

Each PgBouncer here is started by the test from its own ini on a free port (exporter/dev/pgbouncer.py).
prometheus-community's pgbouncer_exporter cannot run on this machine (no Go toolchain or package;
Debian's prometheus-pgbouncer-exporter is a different exporter, whose 1.7 stops at startup on
PgBouncer 1.8+ asking for SHOW STATS' `total_requests`), so its names, types and label names are
compared with tests/data/pgbouncer_exporter_metrics.tsv, read from its source, and pgvigil's values
with what the console itself answers.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from exporter.config import Defaults, TargetSpec, parse_config
from exporter.dev.pgbouncer import ThrowawayPgBouncer
from exporter.scrape.assembly import scrape_once
from exporter.scrape.console import ConsoleSession
from exporter.scrape.session import PreparedSql, QueryFailed
from tests.conftest import parse_exposition, sample

REFERENCE = Path(__file__).parent / "data" / "pgbouncer_exporter_metrics.tsv"
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')


@pytest.fixture(scope="module")
def bouncer(cluster) -> Iterator[ThrowawayPgBouncer]:
    """One server connection per pool: a few clients are enough to make others wait."""
    with ThrowawayPgBouncer(cluster, pool_size=1) as started:
        yield started


def config(targets: dict[str, tuple[str, str]], collectors: str = "[pgbouncer]"):
    body = "".join(f"  {name}:\n    kind: {kind}\n    dsn: {dsn}\n" for name, (kind, dsn) in targets.items())
    return parse_config(f"collectors: {collectors}\ntargets:\n{body}", source="test.yaml")


def console(bouncer: ThrowawayPgBouncer, command: str) -> list[dict]:
    conn = psycopg.connect(bouncer.admin_dsn(), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(command)
            names = [d.name for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        conn.close()


def families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Sample name -> (its family's TYPE, label names other than `target`), read as sent."""
    types: dict[str, str] = {}
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif not line.startswith("#") and (match := _SAMPLE.match(line)):
            name, body = match.groups()
            labels = frozenset(_LABEL.findall(body or "")) - {"target"}
            found.setdefault(name, (types.get(name, "untyped"), labels))
    return found


def labelled(samples: dict, metric: str, labels: dict[str, str]) -> float | None:
    """`sample` for label sets that hold a `name` label (SHOW DATABASES' alias)."""
    found = [v for (n, ls), v in samples.items() if n == metric and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{len(found)} samples of {metric} match {labels}"
    return found[0] if found else None


def hold_server_connections(bouncer: ThrowawayPgBouncer, clients: int, seconds: float) -> list[threading.Thread]:
    """`clients` sessions through PgBouncer, each running pg_sleep: with pool_size 1, all but one wait."""
    def run() -> None:
        conn = psycopg.connect(bouncer.dsn("postgres"), autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(%s)", (seconds,))
        finally:
            conn.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def wait_for_waiting_clients(bouncer: ThrowawayPgBouncer, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(row["cl_waiting"] for row in console(bouncer, "SHOW POOLS") if row["database"] == "postgres") < count:
        assert time.monotonic() < deadline, f"PgBouncer never had {count} waiting clients"
        time.sleep(0.05)


def test_waiting_clients_are_read_back(bouncer):
    # Each holds the one server connection for 4 s: the scrape below must come while the first still
    # sleeps (with 2 s, a busy machine's connects and scrape could outlast it: one waiter, not two).
    threads = hold_server_connections(bouncer, clients=3, seconds=4)
    wait_for_waiting_clients(bouncer, 2)
    time.sleep(0.3)  # maxwait grows while they wait
    samples = parse_exposition(scrape_once(config({"bouncer": ("pgbouncer", bouncer.admin_dsn())})))
    pool = {"target": "bouncer", "database": "postgres", "user": "postgres"}
    assert sample(samples, "pgbouncer_pools_client_waiting_connections", **pool) == 2
    assert sample(samples, "pgbouncer_pools_client_active_connections", **pool) == 1
    assert sample(samples, "pgbouncer_pools_server_active_connections", **pool) == 1
    assert 0.3 <= sample(samples, "pgbouncer_pools_client_maxwait_seconds", **pool) < 10
    for thread in threads:
        thread.join(20)
    after = parse_exposition(scrape_once(config({"bouncer": ("pgbouncer", bouncer.admin_dsn())})))
    # The two waiters waited about 4 s and 8 s: seconds, not PgBouncer's microseconds.
    waited = sample(after, "pgbouncer_stats_totals_client_wait_seconds_total", database="postgres")
    assert 8 <= waited < 60
    assert sample(after, "pgbouncer_stats_client_wait_seconds_total", database="postgres") == waited
    assert sample(after, "pgbouncer_stats_totals_queries_pooled_total", database="postgres") >= 3
    assert sample(after, "pgbouncer_pools_client_waiting_connections", **pool) == 0


def test_values_match_the_console(bouncer):
    samples = parse_exposition(scrape_once(config({"bouncer": ("pgbouncer", bouncer.admin_dsn())})))
    lists = {row["list"]: row["items"] for row in console(bouncer, "SHOW LISTS")}
    assert sample(samples, "pgbouncer_databases", target="bouncer") == lists["databases"]
    assert sample(samples, "pgbouncer_pools", target="bouncer") == lists["pools"]
    settings = {row["key"]: row["value"] for row in console(bouncer, "SHOW CONFIG")}
    assert sample(samples, "pgbouncer_config_max_client_connections") == float(settings["max_client_conn"]) == 100
    database = next(row for row in console(bouncer, "SHOW DATABASES") if row["name"] == "postgres")
    labels = {"name": "postgres", "host": "127.0.0.1", "port": str(database["port"]), "database": "postgres",
              "force_user": "", "pool_mode": ""}
    assert labelled(samples, "pgbouncer_databases_pool_size", labels) == database["pool_size"] == 1
    version = console(bouncer, "SHOW VERSION")[0]["version"]
    assert sample(samples, "pgbouncer_version_info", version=version) == 1
    assert sample(samples, "pgbouncer_up", target="bouncer") == 1


def test_names_types_and_labels_are_pgbouncer_exporters(bouncer):
    """Every metric of the reference exists under the same name, type and label names (plus `target`)."""
    sent = families(scrape_once(config({"bouncer": ("pgbouncer", bouncer.admin_dsn())})))
    expected = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, kind, labels = line.split("\t")
            expected[name] = (kind, frozenset() if labels == "-" else frozenset(labels.split(",")))
    assert {name: sent.get(name) for name in expected} == expected
    assert not {name for name in sent if name.startswith("pgbouncer_")} - set(expected)


def test_the_console_session_sends_only_allowed_show_commands(bouncer):
    session = ConsoleSession(TargetSpec(name="b", dsn=bouncer.admin_dsn(), kind="pgbouncer"), Defaults())
    try:
        assert session.ensure_connected().version >= 10800
        for sql in ("PAUSE postgres", "SHOW POOLS; PAUSE postgres", "SHUTDOWN", "KILL postgres", "SELECT 1",
                    "SHOW CLIENTS"):
            with pytest.raises(QueryFailed, match="refused to run on a PgBouncer console"):
                session.run(PreparedSql(sql), timeout=5, lock_timeout=1)
        result = session.run(PreparedSql("show  pools;"), timeout=5, lock_timeout=1)
        assert result.columns[:2] == ["database", "user"]
    finally:
        session.close()
    assert all(row["paused"] == 0 for row in console(bouncer, "SHOW DATABASES"))


def test_the_console_session_sends_a_command_again_and_again(bouncer):
    """psycopg prepares a statement from its 6th run unless told not to; the console refuses the extended protocol."""
    session = ConsoleSession(TargetSpec(name="b", dsn=bouncer.admin_dsn(), kind="pgbouncer"), Defaults())
    try:
        session.ensure_connected()
        for _ in range(10):
            assert session.run(PreparedSql("SHOW POOLS"), timeout=5, lock_timeout=1).columns[:2] == ["database", "user"]
        assert session.connected
    finally:
        session.close()


def test_several_pgbouncers_and_postgres_from_one_process(cluster, bouncer):
    """Postgres packs never run on PgBouncer targets nor the reverse; a stopped PgBouncer is pgbouncer_up 0."""
    with ThrowawayPgBouncer(cluster, pool_size=3) as second:
        targets = {"db": ("postgres", cluster.dsn()), "one": ("pgbouncer", bouncer.admin_dsn()),
                   "two": ("pgbouncer", second.admin_dsn())}
        text = scrape_once(config(targets, collectors="[default]"))
        samples = parse_exposition(text)
        assert sample(samples, "pg_up", target="db") == 1
        assert sample(samples, "pgbouncer_up", target="one") == sample(samples, "pgbouncer_up", target="two") == 1
        assert sample(samples, "pg_up", target="one") is None
        by_target: dict[str, set[str]] = {}
        for (name, labels), _ in samples.items():
            target = dict(labels).get("target")
            if target and not name.startswith(("pgvigil_", "pg_scrape_collector_")):  # pgvigil's own series
                by_target.setdefault(target, set()).add(name.split("_")[0])
        assert by_target == {"db": {"pg"}, "one": {"pgbouncer"}, "two": {"pgbouncer"}}
        pools = {"database": "postgres", "user": "postgres"}
        assert labelled(samples, "pgbouncer_databases_pool_size", {"target": "two", "name": "postgres"}) == 3
        assert labelled(samples, "pgbouncer_databases_pool_size", {"target": "one", "name": "postgres"}) == 1
        assert sample(samples, "pgvigil_query_success", target="two", query="pgbouncer_pools") == 1
        assert sample(samples, "pgbouncer_pools_client_waiting_connections", target="one", **pools) is not None
        second.stop()
        down = parse_exposition(scrape_once(config(targets, collectors="[pgbouncer]")))
        assert sample(down, "pgbouncer_up", target="two") == 0
        assert sample(down, "pgbouncer_up", target="one") == 1
        assert sample(down, "pgbouncer_pools_client_active_connections", target="two", **pools) is None
