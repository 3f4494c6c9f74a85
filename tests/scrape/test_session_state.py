"""Nothing a query does to its session reaches the next query, and the server refuses a second
statement whatever it was told: on real PostgreSQL 13, 15 (the machine's) and 18.

The hostile SQL here goes straight to the session, past the config check (which rejects most of it),
as a query the check failed to see through would."""
from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from exporter.dev.servers import server_bindir
from exporter.pgbin import find_bindir
from exporter.scrape.session import QueryFailed, TargetSession, prepare_sql
from tests.conftest import config_for

# ts_stat runs its SQL string (query_to_xml too, where the server has libxml: not the embedded 18).
HIDDEN_SCS_OFF = ("SELECT 1 AS v FROM (SELECT * FROM ts_stat("
                  "'SELECT to_tsvector(set_config(''standard_conforming_strings'', ''off'', false))')) AS s")
BACKSLASH_TRICK = ("SELECT 'a\\' AS x, ' AS v) AS pgvigil_query; COMMIT; BEGIN READ WRITE; DELETE FROM precious; "
                   "COMMIT; SELECT * FROM (SELECT 1 AS v --' AS v")


@pytest.fixture(scope="module", params=[13, 15, 18], ids=lambda major: f"pg{major}")
def pg(request, clusters):
    return clusters(find_bindir() if request.param == 15 else server_bindir(request.param))


@pytest.fixture
def db(pg):
    """A database with a table the monitoring role could delete from, and the role `monitor` (pg_monitor,
    DELETE on the table, member of a role that owns it): the worst case a read-only session must survive."""
    name = "s_" + uuid.uuid4().hex[:10]
    pg.create_database(name)
    pg.execute("""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'monitor') THEN CREATE ROLE monitor LOGIN; END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'owner_role') THEN CREATE ROLE owner_role; END IF;
        END $$; GRANT pg_monitor TO monitor; GRANT owner_role TO monitor""")
    pg.execute("CREATE TABLE precious (id int); INSERT INTO precious SELECT generate_series(1, 10);"
               "ALTER TABLE precious OWNER TO owner_role; GRANT SELECT, DELETE ON precious TO monitor", name)
    yield pg, name
    pg.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    pg.execute(f'DROP DATABASE "{name}"')


def _session(pg, name: str, *sqls: str, user: str = "monitor") -> tuple[TargetSession, list]:
    config = config_for(pg.dsn(name, user=user), "  - {name: q, sql: 'SELECT 1 AS v', metrics: {v: {}}}\n")
    query = config.queries[0]
    session = TargetSession(config.targets[0], config.defaults)
    session.ensure_connected()
    return session, [dataclasses.replace(query, sql=sql, labels=()) for sql in sqls]


def _run(session: TargetSession, query, every_column: bool = False) -> list[tuple]:
    """The query's run, past the session's own check too (fetch, not run); `every_column`: as it returns them."""
    prepared = prepare_sql(query, None)
    if every_column:
        prepared = dataclasses.replace(prepared, columns="*")
    return session.fetch(prepared.sql, 5, 1, limit=prepared.limit, prepared=prepared).rows


def _rows_left(pg, name: str) -> int:
    return pg.execute("SELECT count(*) FROM precious", name)[0][0]


def test_the_backslash_trick_deletes_nothing(db):
    pg, name = db
    session, (hidden, trick) = _session(pg, name, HIDDEN_SCS_OFF, BACKSLASH_TRICK)
    try:
        for _ in range(3):
            _run(session, hidden)
            # One SELECT of two string literals, to the server as to pglast: the setting was reset first.
            assert _run(session, trick) == [(None, -1)]  # v is its long string: no number, dropped
    finally:
        session.close()
    assert _rows_left(pg, name) == 10


@pytest.mark.parametrize("sql", [
    "SELECT 1 AS v; DELETE FROM precious",
    "SELECT 1 AS v; COMMIT; BEGIN READ WRITE; DELETE FROM precious; COMMIT",
    "DELETE FROM precious RETURNING 1 AS v",
])
def test_the_server_refuses_what_is_not_one_query(db, sql):
    pg, name = db
    session, _ = _session(pg, name)
    try:
        with pytest.raises(QueryFailed):
            session.fetch(sql, timeout=5, lock_timeout=1, wrap=False)  # past every check of ours
        assert session.fetch("SELECT 1", timeout=5, lock_timeout=1, wrap=False).rows == [(1,)]  # still usable
    finally:
        session.close()
    assert _rows_left(pg, name) == 10


SETTINGS = ("SELECT current_setting('standard_conforming_strings') AS scs, current_setting('search_path') AS path,"
            " current_setting('statement_timeout') AS st, current_setting('lock_timeout') AS lt,"
            " current_setting('work_mem') AS wm, current_setting('DateStyle') AS ds,"
            " current_setting('extra_float_digits') AS efd, current_setting('client_encoding') AS ce,"
            " current_user::text AS who, current_setting('transaction_read_only') AS ro,"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks")
CHANGES = ("SELECT 1 AS v FROM (SELECT set_config('standard_conforming_strings', 'off', false),"
           " set_config('search_path', 'public, pg_catalog', false), set_config('statement_timeout', '0', false),"
           " set_config('lock_timeout', '0', false), set_config('work_mem', '1GB', false),"
           " set_config('DateStyle', 'SQL, DMY', false), set_config('extra_float_digits', '-15', false),"
           " set_config('client_encoding', 'LATIN1', false), set_config('role', 'owner_role', false),"
           " set_config('default_transaction_read_only', 'off', false), pg_advisory_lock(42)) AS s")


def test_what_a_query_sets_does_not_reach_the_next(db):
    pg, name = db
    session, (changes, settings) = _session(pg, name, CHANGES, SETTINGS)
    try:
        before = _run(session, settings, every_column=True)
        _run(session, changes)
        after = _run(session, settings, every_column=True)
    finally:
        session.close()
    assert after == before
    scs, path, statement_timeout, lock_timeout, _, datestyle, digits, encoding, who, read_only, locks = after[0]
    assert (scs, datestyle, digits, encoding) == ("on", "ISO, MDY", "3", "UTF8")
    assert path == 'pg_catalog, "$user", public, pg_temp'  # the user's query: its role's path, after pg_catalog
    assert (statement_timeout, lock_timeout) == ("5s", "1s")
    assert (who, read_only, locks) == ("monitor", "on", 0)


def test_the_database_cannot_choose_how_text_is_lexed_or_read(db):
    """A tenant owning a database sets its defaults; the session's own startup settings outrank them."""
    pg, name = db
    pg.execute(f"ALTER DATABASE \"{name}\" SET standard_conforming_strings = off;"
               f"ALTER DATABASE \"{name}\" SET DateStyle = 'SQL, DMY';"
               f"ALTER DATABASE \"{name}\" SET extra_float_digits = -15")
    session, (values,) = _session(
        pg, name, "SELECT current_setting('standard_conforming_strings') AS scs, 0.1::float8 + 0.2::float8 AS f,"
                  " '2026-12-07 01:02:03+00'::timestamptz AS t")
    try:
        scs, total, at = _run(session, values, every_column=True)[0]
    finally:
        session.close()
    assert (scs, total) == ("on", 0.30000000000000004)
    assert at == dt.datetime(2026, 12, 7, 1, 2, 3, tzinfo=dt.timezone.utc)


def test_a_pack_query_resolves_names_through_pg_catalog_only(db):
    """A shipped pack's query sees neither "$user" nor public: a look-alike there is never called."""
    pg, name = db
    pg.execute("CREATE SCHEMA IF NOT EXISTS monitor AUTHORIZATION monitor", name)
    pg.execute("CREATE FUNCTION monitor.pg_relation_size(oid) RETURNS bigint LANGUAGE sql AS 'SELECT 666::bigint';"
               "CREATE FUNCTION public.pg_relation_size(oid) RETURNS bigint LANGUAGE sql AS 'SELECT 777::bigint'", name)
    session, (user_query,) = _session(pg, name, "SELECT pg_relation_size('public.precious'::regclass::oid) AS v")
    pack_query = dataclasses.replace(user_query, pack="tables")
    try:
        assert _run(session, pack_query) == [(8192, 0)]  # pg_catalog's, through the cast oid -> regclass
        assert _run(session, user_query) == [(666, 0)]  # the user's own query: the role's path, as they wrote it
    finally:
        session.close()


def test_a_value_the_driver_cannot_read_costs_its_row_alone(cluster):
    """A SQL_ASCII database may hold any bytes; PostgreSQL passes them on from shared catalogs as they are."""
    import psycopg

    ascii_db, odd = "a_" + uuid.uuid4().hex[:8], b"odd_\xff\xfe_" + uuid.uuid4().hex[:6].encode()
    cluster.execute(f"CREATE DATABASE {ascii_db} TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
    with psycopg.connect(cluster.dsn(ascii_db), autocommit=True, client_encoding="SQL_ASCII") as raw:
        # Not recorded: from then on PostgreSQL refuses every read of pg_stat_statements' texts in a UTF-8
        # database (it validates each text it returns), which would fail later tests of the shared cluster.
        raw.execute("SET pg_stat_statements.track = 'none'")
        raw.execute(b'CREATE DATABASE "' + odd + b'"')
    try:
        session, (names,) = _session(cluster, "postgres", "SELECT datname::text AS name, 1 AS v FROM pg_database",
                                     user="postgres")
        try:
            prepared = dataclasses.replace(prepare_sql(names, None), columns="*")
            result = session.fetch(prepared.sql, 5, 1, limit=prepared.limit, prepared=prepared)
        finally:
            session.close()
        assert result.unreadable == 1
        assert ascii_db in {row[0] for row in result.rows} and "postgres" in {row[0] for row in result.rows}
    finally:
        with psycopg.connect(cluster.dsn(ascii_db), autocommit=True, client_encoding="SQL_ASCII") as raw:
            raw.execute("SET pg_stat_statements.track = 'none'")
            raw.execute(b'DROP DATABASE "' + odd + b'"')
        cluster.execute(f"DROP DATABASE {ascii_db}")


def test_a_column_the_config_names_but_the_sql_lacks_is_said_in_the_configs_terms(cluster):
    session, (query,) = _session(cluster, "postgres", "SELECT 1 AS oldest, 'x' AS who", user="postgres")
    query = dataclasses.replace(query, labels=("whom",),
                                metrics=(dataclasses.replace(query.metrics[0], column="oldest_secs"),))
    try:
        with pytest.raises(QueryFailed) as failed:
            session.run(prepare_sql(query, None), timeout=5, lock_timeout=1)
    finally:
        session.close()
    assert str(failed.value) == ("its labels and metrics name columns its SQL does not return: 'whom', "
                                 "'oldest_secs'; it returns: oldest, who (written at test.yaml:7)")
