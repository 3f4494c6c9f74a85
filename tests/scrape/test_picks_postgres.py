"""`pick:` against PostgreSQL: the query reads the picked rows until the next pick, and a table
created or dropped in between changes nothing until then (dropped: its rows just go)."""
from __future__ import annotations

import time

import psycopg
from conftest import config_for, parse_exposition, sample

from exporter.scrape.assembly import ScrapeText
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics

EVERY = 2.0
PICK = "SELECT oid FROM pg_class WHERE relkind = 'r' AND relname LIKE 'p\\_%' ORDER BY relname LIMIT 2"


def picked_query(pick: str = PICK) -> str:
    return f"""
  - name: picked
    labels: [relname]
    sql: SELECT relname, 1 AS present FROM pg_class WHERE oid = ANY ({{{{picked}}}})
    metrics: {{present: {{}}}}
    pick:
      every: {EVERY}s
      sql: {pick}
"""


def execute(dsn: str, sql: str) -> None:
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def scraped(runner: Runner) -> tuple[set[str], float | None]:
    result = runner.scrape()
    samples = parse_exposition(ScrapeText(runner.config.queries).text(result) + render_self_metrics(result))
    tables = {dict(labels)["relname"] for name, labels in samples if name == "picked_present"}
    return tables, sample(samples, "pgvigil_query_errors_total", query="picked", reason="error")


def test_the_picked_tables_are_read_until_the_next_pick(fresh_db):
    execute(fresh_db, "CREATE TABLE p_b (); CREATE TABLE p_c (); CREATE TABLE p_d ()")
    runner = Runner(config_for(fresh_db, picked_query()))
    try:
        picked_at = time.monotonic()
        assert scraped(runner) == ({"p_b", "p_c"}, 0)
        execute(fresh_db, "CREATE TABLE p_a (); DROP TABLE p_c")
        if time.monotonic() - picked_at < EVERY:  # p_a is not picked yet; p_c's row is gone, without an error
            assert scraped(runner) == ({"p_b"}, 0)
        time.sleep(max(0.0, EVERY - (time.monotonic() - picked_at)) + 0.1)
        assert scraped(runner) == ({"p_a", "p_b"}, 0)
    finally:
        runner.close()


def test_the_pick_and_the_query_run_as_the_monitoring_role_reads(fresh_db, cluster):
    """A pick whose view the role may not read skips an optional query (capability probing), never an error."""
    execute(fresh_db, "CREATE TABLE p_secret (); DROP ROLE IF EXISTS picks_reader; "
                      "CREATE ROLE picks_reader LOGIN; REVOKE ALL ON p_secret FROM PUBLIC")
    dsn = fresh_db.replace("://postgres@", "://picks_reader@")
    runner = Runner(config_for(dsn, picked_query("SELECT oid FROM p_secret, pg_class") + "    optional: true\n"))
    try:
        result = runner.scrape()
        samples = parse_exposition(render_self_metrics(result))
        assert sample(samples, "pgvigil_query_skipped", query="picked", reason="permission_denied") == 1
        assert sample(samples, "pgvigil_query_errors_total", query="picked", reason="error") in (None, 0)
    finally:
        runner.close()
        execute(fresh_db, "DROP TABLE p_secret; DROP ROLE picks_reader")
