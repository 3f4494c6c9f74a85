"""Whole-cluster discovery against a real PostgreSQL: databases created and dropped live, patterns,
skipped databases, cluster-wide queries once per server, the connection budget."""
from __future__ import annotations

import collections
import threading
import time
import uuid

import psycopg
import pytest
from conftest import parse_exposition, sample
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Config, parse_config
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics

QUERIES = """queries:
  - {name: per_db, sql: "SELECT 1 AS x", metrics: {x: {}}}
  - name: server
    scope: cluster
    sql: "SELECT count(*) AS databases FROM pg_database"
    metrics: {databases: {}}
"""


@pytest.fixture
def prefix(cluster):
    """A unique database name prefix; every database with it is dropped at the end."""
    name = "disc_" + uuid.uuid4().hex[:6]
    yield name
    for (datname,) in cluster.execute(f"SELECT datname FROM pg_database WHERE datname LIKE '{name}%'"):
        cluster.execute(f'ALTER DATABASE "{datname}" IS_TEMPLATE false')
        cluster.execute(f'DROP DATABASE "{datname}" WITH (FORCE)')


def discovery_config(cluster, targets: str, user: str = "postgres", collectors: str = "[]") -> Config:
    return parse_config(f"collectors: {collectors}\ntargets:\n  prod:\n    dsn: {cluster.dsn(user=user)}\n"
                        + targets + (QUERIES if collectors == "[]" else ""), source="test.yaml")


def scrape(runner: Runner, only: list[str] | None = None) -> tuple[str, dict]:
    result = runner.scrape(timeout=10, only=only)
    text = ScrapeText(runner.config.queries).text(result) + render_self_metrics(result)
    return text, parse_exposition(text)


def test_databases_created_and_dropped_live_appear_and_go_without_errors(cluster, prefix):
    cluster.execute(f'CREATE DATABASE "{prefix}_a"')
    runner = Runner(discovery_config(cluster, f"    databases: ['{prefix}_*']\n    discovery_interval: 200ms\n"))
    try:
        _, samples = scrape(runner)
        assert sample(samples, "per_db_x", target="prod", datname=f"{prefix}_a") == 1
        cluster.execute(f'CREATE DATABASE "{prefix}_b"')
        threading.Event().wait(0.25)
        _, samples = scrape(runner)
        assert sample(samples, "per_db_x", target="prod", datname=f"{prefix}_b") == 1
        cluster.execute(f'DROP DATABASE "{prefix}_a" WITH (FORCE)')  # also ends pgvigil's session on it
        _, samples = scrape(runner)  # within the interval: the failed reconnect reads the list again
        assert sample(samples, "pg_up", datname=f"{prefix}_a") is None
        assert sample(samples, "per_db_x", datname=f"{prefix}_a") is None
        assert sample(samples, "pg_up", datname=f"{prefix}_b") == 1
        assert sample(samples, "pg_exporter_last_scrape_error") == 0
        assert list(runner.targets) == [f"prod/{prefix}_b"]
    finally:
        runner.close()


def test_all_with_exclusions_skips_and_counts_templates_closed_and_forbidden_databases(cluster, prefix):
    role = f"{prefix}_monitor"
    cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}")
    for name in ("open", "closed", "forbidden", "tpl", "skipme"):
        cluster.execute(f'CREATE DATABASE "{prefix}_{name}"')
    cluster.execute(f'ALTER DATABASE "{prefix}_closed" ALLOW_CONNECTIONS false')
    cluster.execute(f'REVOKE CONNECT ON DATABASE "{prefix}_forbidden" FROM PUBLIC')
    cluster.execute(f'ALTER DATABASE "{prefix}_tpl" IS_TEMPLATE true')
    runner = Runner(discovery_config(cluster, f"    databases: all\n    exclude_databases: ['{prefix}_skip*']\n",
                                     user=role))
    try:
        _, samples = scrape(runner)
    finally:
        runner.close()
        cluster.execute(f"DROP ROLE {role}")
    monitored = {dict(labels)["datname"] for name, labels in samples if name == "pg_up"}
    assert f"{prefix}_open" in monitored and "postgres" in monitored
    assert not monitored & {f"{prefix}_{n}" for n in ("closed", "forbidden", "tpl", "skipme")}
    skipped = {o: sample(samples, "pgvigil_discovery_databases", target="prod", outcome=o)
               for o in ("excluded", "template", "connections_not_allowed", "no_connect_privilege")}
    assert skipped == {"excluded": 1, "template": 3, "connections_not_allowed": 1, "no_connect_privilege": 1}
    assert sample(samples, "pgvigil_discovery_databases", outcome="monitored") == len(monitored)
    errors = [v for (name, labels), v in samples.items() if name == "pgvigil_query_errors_total"]
    assert errors and not any(errors)


def test_cluster_wide_queries_run_once_per_server(cluster, prefix):
    for name in ("a", "b", "c"):
        cluster.execute(f'CREATE DATABASE "{prefix}_{name}"')
    runner = Runner(discovery_config(cluster, f"    databases: ['{prefix}_*']\n"))
    try:
        _, samples = scrape(runner)
    finally:
        runner.close()
    assert [labels for name, labels in samples if name == "server_databases"] == [frozenset({("target", "prod")})]
    assert len([1 for name, _ in samples if name == "per_db_x"]) == 3


def test_connections_stay_within_the_budget_and_idle_ones_are_closed(cluster, prefix):
    for i in range(8):
        cluster.execute(f'CREATE DATABASE "{prefix}_{i}"')
    config = parse_config(f"collectors: []\ntargets:\n  slow:\n    dsn: {cluster.dsn()}\n"
                          f"    databases: ['{prefix}_*']\n    connection_budget: 3\n" + QUERIES
                          + '  - {name: per_db_slow, sql: "SELECT 1 AS x FROM pg_sleep(0.2)", metrics: {x: {}}}\n')
    count = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgvigil'"
             f" AND datname LIKE '{prefix}%'")
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        conn = psycopg.connect(cluster.dsn(), autocommit=True)
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute(count)
                seen.append(cur.fetchone()[0])
        conn.close()

    runner = Runner(config)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        _, samples = scrape(runner)
    finally:
        stop.set()
        watcher.join()
    try:
        assert len([1 for name, _ in samples if name == "per_db_slow_x"]) == 8
        assert runner.roots["slow"].budget.peak == 3  # never more open at once, by pgvigil's own count
        # The server may still list a backend whose connection was just closed while it exits.
        assert 1 <= max(seen) <= 4
        # 8 databases, budget 3: only the first, which runs the cluster-wide queries on every scrape,
        # keeps its connection between runs (others' backends may take a moment to exit).
        first_only = count.replace("count(*)", "array_agg(datname::text)")
        deadline = time.monotonic() + 5
        while cluster.execute(first_only)[0][0] != [f"{prefix}_0"]:
            assert time.monotonic() < deadline, cluster.execute(first_only)
            time.sleep(0.05)
    finally:
        runner.close()


def duplicated(text: str) -> set[tuple[str, frozenset]]:
    counts = collections.Counter((s.name, frozenset(s.labels.items()))
                                 for family in text_string_to_metric_families(text) for s in family.samples)
    return {key for key, count in counts.items() if count > 1}


def test_the_default_packs_on_discovered_databases_give_one_series_each(cluster, prefix):
    for name in ("a", "b"):
        cluster.execute(f'CREATE DATABASE "{prefix}_{name}"')
        cluster.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)", dbname=f"{prefix}_{name}")
    runner = Runner(discovery_config(cluster, f"    databases: ['{prefix}_*']\n", collectors="[default]"))
    plain = Runner(parse_config(f"targets:\n  prod: {cluster.dsn()}\n"))
    try:
        text, samples = scrape(runner)
        plain_text, _ = scrape(plain)
    finally:
        runner.close()
        plain.close()
    # No series twice: a datname label from the SQL and one from discovery, or a cluster-wide query run
    # on two databases. (Compared with one configured target: the packs' own overlaps are not discovery's.)
    assert duplicated(text) <= duplicated(plain_text)
    for name in ("a", "b"):
        assert sample(samples, "pg_stat_user_tables_n_live_tup", target="prod", datname=f"{prefix}_{name}",
                      relname="t") is not None
    assert sum(v for (name, _), v in samples.items() if name == "pgvigil_query_errors_total") == 0
