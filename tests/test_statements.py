"""The statements pack on a real PostgreSQL: pg_stat_statements(false), never the view; the statements
whose time grew most since the previous run, a new hot one included; a remainder per user and database."""
from __future__ import annotations

import re

import psycopg
from conftest import parse_exposition

from exporter.config import parse_config
from exporter.dev.throwaway import ThrowawayCluster
from exporter.scrape.assembly import ScrapeText
from exporter.scrape.runner import Runner
from exporter.sqltext import NOT_SHOWN, dropped_texts


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


def test_statement_texts_show_what_a_queryid_is_without_its_constants_or_comments():
    """PostgreSQL 15 keeps utility statements as typed and every version keeps comments: the texts
    pg_stat_statements holds carry secrets, the statement_texts pack's labels never do."""
    password, api_key, card = "Hunter2-pw-51f0", "ak-93d1e7c2", "4242424242424242"
    cluster = ThrowawayCluster().start()
    try:
        cluster.execute("CREATE EXTENSION pg_stat_statements")
        cluster.execute(f"CREATE ROLE texts_app LOGIN; ALTER ROLE texts_app PASSWORD '{password}'")
        cluster.execute(f"SELECT /* api_key={api_key} */ count(*) FROM pg_class WHERE relname <> '{card}'")
        held = " ".join(row[0] for row in cluster.execute("SELECT query FROM pg_stat_statements"))
        if int(cluster.execute("SHOW server_version_num")[0][0]) < 160000:
            assert password in held  # the hazard is real where the test runs
        assert api_key in held
        runner = Runner(parse_config(f"collectors: [statement_texts, statements]\ntargets:\n  db: {cluster.dsn()}\n"))
        try:
            text = ScrapeText(runner.config.queries).text(runner.scrape(timeout=20))
        finally:
            runner.close()
    finally:
        cluster.cleanup()
    texts = {dict(labels)["query"]: dict(labels)["queryid"] for (name, labels) in parse_exposition(text)
             if name == "pg_stat_statements_query_info"}
    assert "ALTER ROLE texts_app PASSWORD $1" in texts
    assert "SELECT count(*) FROM pg_class WHERE relname <> $1" in texts
    for secret in (password, api_key, card):
        assert secret not in text
    # The info series joins the statements pack's series on queryid.
    seconds = {dict(labels)["queryid"] for (name, labels) in parse_exposition(text)
               if name == "pg_stat_statements_seconds_total"}
    assert texts["SELECT count(*) FROM pg_class WHERE relname <> $1"] in seconds


def test_statement_texts_typed_with_standard_conforming_strings_off_or_setting_values_never_show():
    """A client with standard_conforming_strings off writes '\\'' inside a plain string; PostgreSQL 15 keeps
    its ALTER ROLE as typed, and every version keeps a SET's bare value: none of it reaches a label."""
    leaked, api_key, quoted, token = "Leak3dPart9c", "sk_live_51HxQz", "Qu0tedS3cret", "tok_77ab3e"
    cluster = ThrowawayCluster().start()
    try:
        cluster.execute("CREATE EXTENSION pg_stat_statements; CREATE ROLE texts_app LOGIN")
        with psycopg.connect(cluster.dsn(), autocommit=True, options="-c standard_conforming_strings=off") as conn:
            conn.execute(f"ALTER ROLE texts_app PASSWORD 'abc\\' {leaked}'")
        cluster.execute(f'SET app.api_key = {api_key}; SET app.quoted TO "{quoted}"; '
                        f"ALTER ROLE texts_app SET app.token = {token}")
        held = " ".join(row[0] for row in cluster.execute("SELECT query FROM pg_stat_statements"))
        if int(cluster.execute("SHOW server_version_num")[0][0]) < 160000:
            assert leaked in held  # the hazard is real where the test runs
        assert api_key in held and quoted in held and token in held
        before = dropped_texts()
        runner = Runner(parse_config(f"collectors: [statement_texts]\ntargets:\n  db: {cluster.dsn()}\n"))
        try:
            text = ScrapeText(runner.config.queries).text(runner.scrape(timeout=20))
        finally:
            runner.close()
    finally:
        cluster.cleanup()
    texts = {dict(labels)["query"] for (name, labels) in parse_exposition(text)
             if name == "pg_stat_statements_query_info"}
    assert "SET app.api_key = $1" in texts and "SET app.quoted TO $1" in texts
    assert "ALTER ROLE texts_app SET app.token = $1" in texts
    if leaked in held:
        assert NOT_SHOWN in texts and dropped_texts() > before
    for secret in (leaked, api_key, quoted, token):
        assert secret not in text
