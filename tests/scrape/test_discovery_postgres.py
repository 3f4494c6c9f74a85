"""Whole-cluster discovery against a real PostgreSQL: databases created and dropped live, patterns,
skipped databases, cluster-wide queries once per server and in the DSN's database, the connection
budget, hostile database names, and hundreds of databases within the scrape's deadline."""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
import urllib.request
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
    """A unique database name prefix; every database whose name holds it is dropped at the end."""
    name = "disc_" + uuid.uuid4().hex[:6]
    yield name
    # Names as bytes: one that is not UTF-8 is dropped by its own test, from its SQL_ASCII database.
    rows = cluster.execute("SELECT decode(replace(datname::text, E'\\\\', E'\\\\\\\\'), 'escape')"
                           f" FROM pg_database WHERE datname LIKE '%{name}%' ORDER BY datname DESC")
    for (raw,) in rows:
        try:
            datname = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            continue
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
        # The DSN's database (`postgres`, left out by the pattern) runs the cluster-wide query only.
        assert list(runner.targets) == ["prod/postgres", f"prod/{prefix}_b"]
        assert sample(samples, "server_databases", target="prod") > 0
        assert sample(samples, "per_db_x", datname="postgres") is None
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
                          + '  - {name: per_db_slow, sql: "SELECT 1 AS x FROM pg_sleep(0.2)", allow_calls: [pg_sleep],'
                          ' metrics: {x: {}}}\n')
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
        # 8 databases, budget 3: only the DSN's database (`postgres`), which runs the cluster-wide queries
        # on every scrape, keeps its connection between runs (others' backends may take a moment to exit).
        kept = count.replace("count(*)", "array_agg(datname::text)")
        deadline = time.monotonic() + 5
        while cluster.execute(kept)[0][0] is not None:
            assert time.monotonic() < deadline, cluster.execute(kept)
            time.sleep(0.05)
        home = count.replace(f"LIKE '{prefix}%'", "= 'postgres'")
        assert cluster.execute(home)[0][0] >= 1
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


def forged_view(cluster, dbname: str, view: str, forged: dict[str, str]) -> None:
    """fake.<view> in `dbname`: pg_catalog's view with the `forged` columns' values replaced by SQL expressions."""
    cases = " ".join(f"WHEN '{column}' THEN '{value.replace(chr(39), chr(39) * 2)} AS ' || quote_ident(attname)"
                     for column, value in forged.items())
    columns = cluster.execute(
        f"SELECT string_agg(CASE attname::text {cases} ELSE quote_ident(attname) END, ', ' ORDER BY attnum)"
        f" FROM pg_attribute WHERE attrelid = 'pg_catalog.{view}'::regclass AND attnum > 0")[0][0]
    cluster.execute(f"CREATE SCHEMA IF NOT EXISTS fake; CREATE VIEW fake.{view} AS SELECT {columns}"
                    f" FROM pg_catalog.{view}", dbname=dbname)


def test_cluster_wide_queries_run_in_the_dsns_database_whatever_sorts_first(cluster, prefix):
    """A database sorting before the DSN's, shadowing pg_stat_database and pg_stat_activity on its own
    search_path and without pg_stat_statements, changes nothing: cluster-wide queries run in the DSN's."""
    first = f"!{prefix}_first"
    cluster.execute(f'CREATE DATABASE "{first}"')
    forged_view(cluster, first, "pg_stat_database", {"xact_rollback": "999999::bigint"})
    # Every process (checkpointer, walwriter...) an active client of `postgres` since 2000.
    forged_view(cluster, first, "pg_stat_activity", {
        "datid": "(SELECT oid FROM pg_database WHERE datname = 'postgres')", "backend_type": "'client backend'::text",
        "state": "'active'::text", "query_start": "'2000-01-01'::timestamptz"})
    cluster.execute(f'ALTER DATABASE "{first}" SET search_path = fake, pg_catalog, public')
    cluster.execute("SELECT 1 AS pgvigil_test_statement")  # pg_stat_statements has at least one row
    config = parse_config(f"collectors: [database, activity, statements]\ntargets:\n  prod:\n"
                          f"    dsn: {cluster.dsn()}\n    databases: ['!{prefix}*', postgres]\n", source="test.yaml")
    runner = Runner(config)
    try:
        _, samples = scrape(runner)
    finally:
        runner.close()
    assert sample(samples, "pg_up", target="prod", datname=first) == 1  # monitored, just not the server's voice
    rollbacks = {dict(labels)["datname"]: v for (name, labels), v in samples.items()
                 if name == "pg_stat_database_xact_rollback_total"}
    assert rollbacks and 999999 not in rollbacks.values(), rollbacks
    durations = [v for (name, _), v in samples.items() if name == "pg_stat_activity_max_query_duration_seconds"]
    assert durations and max(durations) < 86400, durations
    statements = [labels for name, labels in samples if name == "pg_stat_statements_calls_total"]
    assert statements and all(("target", "prod") in labels for labels in statements)
    assert not [labels for name, labels in samples if name == "pgvigil_query_skipped"]


def test_an_extension_missing_in_the_dsns_database_skips_its_queries_visibly(cluster, prefix, caplog):
    """pg_stat_statements exists in `postgres` but the DSN names another database: its queries are
    skipped there with a reason, not silently dropped, and not run in some other database instead."""
    home = f"{prefix}_home"
    cluster.execute(f'CREATE DATABASE "{home}"')
    config = parse_config(f"collectors: [statements]\ntargets:\n  prod:\n    dsn: {cluster.dsn(home)}\n"
                          f"    databases: all\n", source="test.yaml")
    runner = Runner(config)
    caplog.set_level(logging.INFO, logger="exporter")
    try:
        _, samples = scrape(runner)
    finally:
        runner.close()
    assert not [1 for name, _ in samples if name.startswith("pg_stat_statements_")]
    skipped = {dict(labels)["query"]: v for (name, labels), v in samples.items() if name == "pgvigil_query_skipped"
               and ("reason", "missing_extension") in labels and ("datname", home) in labels}
    assert skipped and all(q.startswith("pg_stat_statements") for q in skipped), skipped
    assert all(q not in dict(labels).get("query", "") for (name, labels) in samples
               if name == "pgvigil_query_skipped" and ("datname", home) not in labels for q in skipped)
    assert any("pg_stat_statements" in r.getMessage() and "not installed" in r.getMessage() for r in caplog.records)


def test_a_database_name_that_is_not_utf8_is_one_skipped_database_not_an_outage(cluster, prefix, caplog):
    """A name created from a SQL_ASCII database with a byte that is not UTF-8: skipped, counted and
    logged escaped; every other database is monitored as before."""
    ascii_db = f"{prefix}_ascii"
    cluster.execute(f"CREATE DATABASE \"{ascii_db}\" TEMPLATE template0 ENCODING 'SQL_ASCII'"
                    " LC_COLLATE 'C' LC_CTYPE 'C'")
    cluster.execute(f'CREATE DATABASE "{prefix}_ok"')
    bad = prefix.encode() + b"_bad\xff\xfe"
    sql_ascii = psycopg.connect(cluster.dsn(ascii_db), autocommit=True)
    # Not recorded in pg_stat_statements: PostgreSQL would refuse every later read of its texts in a UTF-8
    # database of this shared cluster (it validates each text it returns).
    sql_ascii.execute("SET pg_stat_statements.track = 'none'")
    try:
        sql_ascii.execute(b'CREATE DATABASE "' + bad + b'"')
        names = [bytes(raw) for (raw,) in cluster.execute(
            "SELECT decode(replace(datname::text, E'\\\\', E'\\\\\\\\'), 'escape') FROM pg_database")]
        assert bad in names  # the server holds the name as it was given
        # A cluster-wide query reading the names as text: the row the driver cannot read is counted.
        names = ('  - {name: names, scope: cluster, labels: [datname], metrics: {x: {}},'
                 f' sql: "SELECT datname, 1 AS x FROM pg_database WHERE datname LIKE \'{prefix}%\'"}}\n')
        runner = Runner(parse_config(f"collectors: []\ntargets:\n  prod:\n    dsn: {cluster.dsn()}\n"
                                     f"    databases: ['{prefix}_*']\n" + QUERIES + names, source="test.yaml"))
        caplog.set_level(logging.INFO, logger="exporter")
        try:
            _, samples = scrape(runner)
        finally:
            runner.close()
    finally:
        sql_ascii.execute(b'DROP DATABASE IF EXISTS "' + bad + b'"')
        sql_ascii.close()
    assert sample(samples, "pgvigil_discovery_success", target="prod") == 1
    assert sample(samples, "pg_up", target="prod", datname=f"{prefix}_ok") == 1
    assert sample(samples, "pg_up", target="prod", datname=ascii_db) == 1
    assert sample(samples, "pgvigil_discovery_databases", target="prod", outcome="monitored") == 2
    assert sample(samples, "pgvigil_discovery_databases", target="prod", outcome="undecodable_name") == 1
    logged = [r.getMessage() for r in caplog.records if "_bad" in r.getMessage()]
    assert logged and all(f"{prefix}_bad\\xff\\xfe" in m for m in logged), logged
    assert sample(samples, "names_x", datname=f"{prefix}_ok") == 1
    assert sample(samples, "pgvigil_query_errors_total", query="names", reason="invalid_value") == 1


def test_a_database_name_cannot_forge_log_lines(cluster, prefix, caplog):
    evil = f"{prefix}_x\n2031-01-01 ERROR exporter: forged\r\x1b[2J"  # within NAMEDATALEN (63 bytes)
    cluster.execute(f'CREATE DATABASE "{evil}"')
    cluster.execute(f'CREATE DATABASE "{prefix}_plain"')
    runner = Runner(discovery_config(cluster, f"    databases: ['{prefix}_*']\n"))
    caplog.set_level(logging.INFO, logger="exporter")
    try:
        _, samples = scrape(runner)
    finally:
        runner.close()
    assert sample(samples, "pg_up", target="prod", datname=evil) == 1  # monitored, the label escaped by the format
    messages = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert messages, [r.getMessage() for r in caplog.records]
    for message in messages:
        assert not any(c in message for c in "\n\r\x1b"), message
        assert f"{prefix}_x\\n2031-01-01" in message and "\\r\\x1b[2J" in message


MANY_DATABASES = int(os.environ.get("PGVIGIL_TEST_MANY_DATABASES", "250"))


@pytest.fixture
def many_databases(cluster, prefix):
    """MANY_DATABASES empty databases named <prefix>_0000...; dropped by `prefix`."""
    conn = psycopg.connect(cluster.dsn(), autocommit=True)
    try:
        for i in range(MANY_DATABASES):
            conn.execute(f'CREATE DATABASE "{prefix}_{i:04}"')
    finally:
        conn.close()
    return prefix


# PGVIGIL_TEST_MANY_DATABASES=2000 for the reported case; creating and dropping them is most of the test's time.
@pytest.mark.timeout(300 + MANY_DATABASES)
@pytest.mark.parametrize("count", [MANY_DATABASES])
def test_hundreds_of_databases_answer_within_the_deadline_never_falsely_down(cluster, many_databases, count):
    """The shipped packs on `count` databases at the default connection budget (5): every scrape
    answers by its deadline with what is fresh, a database not yet visited has no pg_up (it is counted
    as not yet scraped, never reported down), /health answers from state in under a second, and every
    database is reached in the end."""
    from exporter.server import start_server

    config = parse_config(f"targets:\n  prod:\n    dsn: {cluster.dsn()}\n    databases: ['{many_databases}_*']\n",
                          source="test.yaml")
    assert config.targets[0].connection_budget == 5 and config.defaults.scrape_timeout == 10
    handle = start_server(config)
    deadline, margin = 2.5, 0.75  # Prometheus announces 3 s: pgvigil keeps 0.5 s for the answer
    seen_up: set[str] = set()
    slowest = slowest_health = 0.0
    pending: list[float] = []
    try:
        give_up = time.monotonic() + 30 + count * 0.5
        while len(seen_up) < count:
            assert time.monotonic() < give_up, f"{len(seen_up)} of {count} databases reached"
            started = time.monotonic()
            request = urllib.request.Request(handle.url + "/metrics",
                                             headers={"X-Prometheus-Scrape-Timeout-Seconds": str(deadline + 0.5)})
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
            took = time.monotonic() - started
            slowest = max(slowest, took)
            assert took < deadline + margin, f"a scrape took {took:.2f}s against a {deadline}s deadline"
            samples = parse_exposition(text)
            up = {dict(labels)["datname"]: v for (name, labels), v in samples.items()
                  if name == "pg_up" and dict(labels).get("datname", "").startswith(many_databases)}
            assert all(v == 1 for v in up.values()), sorted(d for d, v in up.items() if v != 1)[:5]
            assert seen_up <= set(up), "a database reached before has no pg_up now"
            seen_up = set(up)
            waiting = sample(samples, "pgvigil_discovery_databases_not_yet_scraped", target="prod")
            assert waiting == count - len(up)
            pending.append(waiting)
            started = time.monotonic()
            with urllib.request.urlopen(handle.url + "/health", timeout=60) as response:
                health = json.loads(response.read())
            slowest_health = max(slowest_health, time.monotonic() - started)
            assert time.monotonic() - started < 1.0, f"/health took {time.monotonic() - started:.2f}s"
            assert not [name for name, t in health["targets"].items() if t["up"] is False]
    finally:
        handle.stop()
    assert pending[-1] == 0 and pending == sorted(pending, reverse=True), pending
    print(f"{count} databases: slowest scrape {slowest:.2f}s, slowest /health {slowest_health:.3f}s, "
          f"{len(pending)} scrapes until every database was reached")


def test_a_dropped_database_leaves_the_cached_cluster_wide_results_at_once(cluster, prefix):
    """pg_database_size is cached 5 minutes: a database dropped meanwhile kept its size series until then."""
    cluster.execute(f'CREATE DATABASE "{prefix}_a"')
    cluster.execute(f'CREATE DATABASE "{prefix}_b"')
    runner = Runner(discovery_config(cluster, f"    databases: ['{prefix}_*']\n    discovery_interval: 200ms\n",
                                     collectors="[database]"))
    try:
        _, samples = scrape(runner)
        assert sample(samples, "pg_database_size_bytes", target="prod", datname=f"{prefix}_a") > 0
        cluster.execute(f'DROP DATABASE "{prefix}_a" WITH (FORCE)')
        threading.Event().wait(0.3)  # past the discovery interval
        deadline = time.monotonic() + 10
        while sample(scrape(runner)[1], "pg_database_size_bytes", target="prod", datname=f"{prefix}_a") is not None:
            assert time.monotonic() < deadline, "the dropped database's size is still exported"
            threading.Event().wait(0.2)
        _, samples = scrape(runner)
        assert sample(samples, "pg_database_size_bytes", target="prod", datname=f"{prefix}_b") > 0
    finally:
        runner.close()
