"""The statements pack on a real PostgreSQL: pg_stat_statements(false), never the view; the statements
whose time grew most since the previous run, a new hot one included; a remainder per user and database."""
from __future__ import annotations

import re

from conftest import parse_exposition

from exporter.config import parse_config
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.runner import Runner


def test_every_statements_query_reads_the_function_without_query_texts():
    queries = [q for q in parse_config("collectors: [statements]\n").queries]
    assert queries
    for query in queries:
        assert "pg_stat_statements(false)" in query.sql, query.name
        assert not re.search(r"pg_stat_statements\s+s\b", query.sql), query.name


def exported(runner: Runner) -> dict[tuple[str, str], float]:
    """(datname, queryid) -> seconds_total of this scrape's pg_stat_statements series."""
    samples = parse_exposition(ScrapeText(runner.config.queries).text(runner.scrape(timeout=20)))
    return {(dict(labels)["datname"], dict(labels)["queryid"]): value for (name, labels), value in samples.items()
            if name == "pg_stat_statements_seconds_total"}


def test_a_new_hot_statement_enters_the_top_and_the_rest_is_other(cluster, fresh_db):
    dbname = fresh_db.rsplit("/", 1)[1]
    cluster.execute("CREATE EXTENSION pg_stat_statements;"
                    + "".join(f"CREATE TABLE t{i} (id int); SELECT count(*) FROM t{i};" for i in range(150)), dbname)
    runner = Runner(parse_config(f"collectors: [statements]\ntargets:\n  db: {fresh_db}\n"))
    try:
        first = exported(runner)
        cluster.execute("CREATE TABLE hot (id int); SELECT pg_sleep(0.3) FROM hot RIGHT JOIN (VALUES (1)) v(x) ON true",
                        dbname)
        second = exported(runner)
    finally:
        runner.close()
    (hot,) = cluster.execute("SELECT queryid::text FROM pg_stat_statements WHERE query LIKE '%pg_sleep(%) FROM hot%'")
    assert (dbname, hot[0]) in second and (dbname, hot[0]) not in first
    assert (dbname, "other") in first and (dbname, "other") in second
    assert second[(dbname, "other")] >= first[(dbname, "other")]
    statements = [key for key in second if key[1] != "other"]
    assert len(statements) == 100
