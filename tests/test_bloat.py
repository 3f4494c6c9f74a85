"""The bloat pack (exporter/packs/bloat.yaml): its estimate against pgstattuple's measure, and its blind spots.

Accuracy: tables of 10 MB or more of several shapes (narrow fixed-width rows, wide text rows,
nullable columns) and a btree index are filled, 30 % of their rows deleted, then VACUUMed (not
FULL) and ANALYZEd; pgvigil's estimate of the wasted bytes must be within 20 % of pgstattuple's
free plus dead bytes, and the test prints how close each shape came (`pytest -s`). On every
supported major, the estimate runs and lands near the known dead space of a smaller table.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import yaml
from packs.exposition import Sample, find, parse_samples

from exporter.config import PACKS_DIR, PICKED_PLACEHOLDER, parse_config
from exporter.scrape.assembly import scrape_once

MONITOR = "pgvigil_bloat_monitor"

# name -> (DDL, rows): each over 10 MB before the delete
SHAPES = {
    "narrow": ("CREATE TABLE narrow (id int, a int, b bigint) WITH (autovacuum_enabled = false);"
               "INSERT INTO narrow SELECT g, g % 1000, g * 7 FROM generate_series(1, 600000) g;"
               "CREATE INDEX narrow_id ON narrow (id) WITH (fillfactor = 100)"),
    "wide": ("CREATE TABLE wide (id int, payload text, created timestamptz, score float8, flag bool)"
             " WITH (autovacuum_enabled = false);"
             "INSERT INTO wide SELECT g, repeat(md5(g::text), 2 + g % 5), now(), g / 3.0, g % 2 = 0"
             " FROM generate_series(1, 60000) g"),
    "nullable": ("CREATE TABLE nullable (id int, a int, b text, c numeric, d date, e bigint)"
                 " WITH (autovacuum_enabled = false);"
                 "INSERT INTO nullable SELECT g, CASE WHEN g % 2 = 0 THEN g END,"
                 " CASE WHEN g % 3 <> 0 THEN 'name-' || g END, g * 1.5,"
                 " CASE WHEN g % 5 <> 0 THEN date '2020-01-01' + g % 1000 END, g FROM generate_series(1, 250000) g"),
}
TOLERANCE = 0.20


def scrape(dsn: str) -> list[Sample]:
    samples = parse_samples(scrape_once(parse_config(f"targets:\n  app:\n    dsn: {dsn}\ncollectors: [bloat]\n")))
    assert [s.labels for s in find(samples, "pgvigil_query_success") if s.value != 1] == []
    return samples


def wasted(samples: list[Sample], kind: str, name: str) -> Sample | None:
    label = "relname" if kind == "table" else "indexrelname"
    found = [s for s in find(samples, f"pg_bloat_{kind}_wasted_bytes") if s.labels[label] == name]
    return found[0] if found else None


@pytest.fixture(scope="module")
def bloated(cluster) -> Iterator[tuple[str, str]]:
    """A database with the shapes, 30 % of each deleted, vacuumed and analyzed; (name, DSN)."""
    name = "t_bloat_" + uuid.uuid4().hex[:8]
    dsn = cluster.create_database(name)
    cluster.execute("CREATE EXTENSION pgstattuple", name)
    for ddl in SHAPES.values():
        cluster.execute(ddl, name)
    for table in SHAPES:
        cluster.execute(f"DELETE FROM {table} WHERE id % 10 < 3", name)
        cluster.execute(f"VACUUM {table}", name)
        cluster.execute(f"ANALYZE {table}", name)
    yield name, dsn
    cluster.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.parametrize("kind, relation", [("table", "narrow"), ("table", "wide"), ("table", "nullable"),
                                            ("index", "narrow_id")])
def test_estimate_is_within_20_percent_of_pgstattuple(cluster, bloated, kind, relation):
    db, dsn = bloated
    size, free, dead = cluster.execute(
        f"SELECT table_len, free_space, dead_tuple_len FROM pgstattuple('{relation}')", db)[0]
    assert size >= 10 * 1024 * 1024
    measured = free + dead
    estimate = wasted(scrape(dsn), kind, relation)
    assert estimate is not None
    error = (estimate.value - measured) / measured
    print(f"\nbloat {kind} {relation}: size {size / 2**20:.1f} MiB, pgstattuple free+dead {measured / 2**20:.2f} MiB "
          f"({measured / size:.1%}), estimate {estimate.value / 2**20:.2f} MiB, off by {error:+.1%}")
    assert abs(error) <= TOLERANCE


def test_ratio_is_wasted_over_size(cluster, bloated):
    db, dsn = bloated
    samples = scrape(dsn)
    pages = int(cluster.execute("SELECT relpages FROM pg_class WHERE relname = 'narrow'", db)[0][0])
    ratio = [s for s in find(samples, "pg_bloat_table_wasted_ratio") if s.labels["relname"] == "narrow"][0]
    assert ratio.value == pytest.approx(wasted(samples, "table", "narrow").value / (pages * 8192))
    assert ratio.labels == {"target": "app", "datname": db, "schemaname": "public", "relname": "narrow"}


def test_blind_spots_are_left_out_not_guessed(cluster, fresh_db):
    """Never analyzed, too small, a hash index, an expression index, and columns the role may not read."""
    cluster.execute("""
        CREATE TABLE unanalyzed (id int, v text) WITH (autovacuum_enabled = false);
        INSERT INTO unanalyzed SELECT g, 'x' FROM generate_series(1, 20000) g;
        CREATE TABLE tiny (id int); INSERT INTO tiny VALUES (1); ANALYZE tiny;
        CREATE TABLE hashed (id int, v text) WITH (autovacuum_enabled = false);
        INSERT INTO hashed SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
        CREATE INDEX hashed_hash ON hashed USING hash (id);
        CREATE INDEX hashed_lower ON hashed (lower(v));
        CREATE INDEX hashed_btree ON hashed (id);
        ANALYZE hashed;""", fresh_db.rsplit("/", 1)[1])
    samples = scrape(fresh_db)
    tables = {s.labels["relname"] for s in find(samples, "pg_bloat_table_wasted_bytes")}
    indexes = {s.labels["indexrelname"] for s in find(samples, "pg_bloat_index_wasted_bytes")}
    assert tables == {"hashed"} and indexes == {"hashed_btree"}
    # a pg_monitor role may read pg_stats only for the columns it may SELECT: none here
    cluster.execute(f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MONITOR}') THEN CREATE ROLE {MONITOR} LOGIN; END IF;
        END $$; GRANT pg_monitor TO {MONITOR}""")
    as_monitor = scrape(fresh_db.replace("postgres@", f"{MONITOR}@", 1))
    assert find(as_monitor, "pg_bloat_table_wasted_bytes") == []


def test_picks_are_the_tables_and_indexes_packs_own():
    """Same text, same max_series: the runner keeps one pick per target for both packs."""
    def pick(pack: str, query: str) -> tuple[str, int]:
        doc = yaml.safe_load((PACKS_DIR / f"{pack}.yaml").read_text())
        spec = next(q for q in doc["queries"] if q["name"] == query)
        return spec["pick"]["sql"], spec["max_series"]

    assert pick("bloat", "pg_bloat_table") == pick("tables", "pg_stat_user_tables")
    assert pick("bloat", "pg_bloat_index") == pick("indexes", "pg_stat_user_indexes")


@pytest.fixture(scope="module")
def major_db(major_cluster) -> Iterator[str]:
    name = "t_bloat_m_" + uuid.uuid4().hex[:8]
    dsn = major_cluster.create_database(name)
    major_cluster.execute("""
        CREATE TABLE halved (id int, v bigint) WITH (autovacuum_enabled = false);
        INSERT INTO halved SELECT g, g FROM generate_series(1, 50000) g;
        CREATE INDEX halved_id ON halved (id);
        DELETE FROM halved WHERE id % 2 = 0;""", name)
    major_cluster.execute("VACUUM halved", name)
    major_cluster.execute("ANALYZE halved", name)
    yield dsn
    major_cluster.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_estimate_on_every_major(major_db):
    """Half the rows deleted: the table's estimated waste ratio is about a half, the index's too."""
    samples = scrape(major_db)
    table = [s.value for s in find(samples, "pg_bloat_table_wasted_ratio") if s.labels["relname"] == "halved"]
    index = [s.value for s in find(samples, "pg_bloat_index_wasted_ratio") if s.labels["indexrelname"] == "halved_id"]
    assert len(table) == 1 and 0.4 <= table[0] <= 0.6
    assert len(index) == 1 and 0.35 <= index[0] <= 0.65


# -- the shipped SQL against the reference: same estimates, linear cost ---------------------------------

REFERENCE = Path(__file__).parent / "data" / "bloat_reference.yaml"
READER = "pgvigil_bloat_reader"  # pg_monitor, SELECT on schema app, two columns of other.orders
# Every case the estimate treats apart: two tables of one name in two schemas, fillfactors, NULLs,
# TOASTed and compressed values, a dropped column, a column added since ANALYZE, inheritance (pg_stats
# also has the parent's inherited rows), partitions, a materialized view, row level security, column
# privileges, and indexes with INCLUDE, a repeated column, a predicate, an expression, a hash.
VARIED = """
CREATE SCHEMA app; CREATE SCHEMA other;
CREATE TABLE app.orders (id bigint PRIMARY KEY, customer int, note text, amount numeric(12, 2), created timestamptz,
                         tags text[], payload jsonb, flag bool) WITH (fillfactor = 80, autovacuum_enabled = false);
INSERT INTO app.orders SELECT g, g % 100, CASE WHEN g % 3 <> 0 THEN repeat('n', g % 200) END, g / 7.0,
    '2024-01-01'::timestamptz + g * interval '1 minute', ARRAY['a', 'b' || g],
    CASE WHEN g % 50 = 0 THEN to_jsonb(repeat(md5(g::text), 200)) END, g % 2 = 0 FROM generate_series(1, 6000) g;
CREATE INDEX orders_customer ON app.orders (customer) INCLUDE (amount);
CREATE INDEX orders_note ON app.orders (note, customer) WITH (fillfactor = 70);
CREATE INDEX orders_created ON app.orders (created) WHERE flag;
CREATE INDEX orders_twice ON app.orders (id, id);
CREATE INDEX orders_lower ON app.orders (lower(note));
CREATE INDEX orders_hash ON app.orders USING hash (customer);
CREATE TABLE other.orders (id int, code char(3), gone text, n smallint, d date, x float4)
    WITH (autovacuum_enabled = false);
INSERT INTO other.orders SELECT g, 'c' || g % 10, 'gone', g % 30000, CASE WHEN g % 4 = 0 THEN DATE '2020-01-01' END,
    g / 3.0 FROM generate_series(1, 20000) g;
ALTER TABLE other.orders DROP COLUMN gone;
CREATE INDEX other_orders_code ON other.orders (code, n);
CREATE TABLE app.wide (id int, {wide}) WITH (autovacuum_enabled = false);
INSERT INTO app.wide SELECT g, {wide_values} FROM generate_series(1, 400) g;
CREATE TABLE app.late (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false);
INSERT INTO app.late SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
CREATE TABLE app.parent (id int, v text) WITH (autovacuum_enabled = false);
CREATE TABLE app.child (w bigint) INHERITS (app.parent) WITH (autovacuum_enabled = false);
INSERT INTO app.parent SELECT g, repeat('p', g % 40) FROM generate_series(1, 4000) g;
INSERT INTO app.child SELECT g, CASE WHEN g % 2 = 0 THEN 'c' END, g FROM generate_series(1, 4000) g;
CREATE TABLE app.measures (at date, v float8) PARTITION BY RANGE (at);
CREATE TABLE app.measures_1 PARTITION OF app.measures FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE app.measures_2 PARTITION OF app.measures FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
INSERT INTO app.measures SELECT DATE '2020-01-01' + g % 700, g FROM generate_series(1, 8000) g;
CREATE TABLE app.secret (id int, v text) WITH (autovacuum_enabled = false);
INSERT INTO app.secret SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
ALTER TABLE app.secret ENABLE ROW LEVEL SECURITY;
CREATE MATERIALIZED VIEW app.summary AS SELECT customer, count(*) AS n, max(note) AS note FROM app.orders GROUP BY 1
    UNION ALL SELECT g, g, md5(g::text) FROM generate_series(1000, 4000) g;
DELETE FROM app.orders WHERE id % 10 < 3; DELETE FROM other.orders WHERE id % 4 = 1;
DELETE FROM app.child WHERE id % 2 = 0;
"""
WIDE_COLUMNS = 399


def varied_schema() -> str:
    kinds = ("int", "text", "bigint", "bool", "numeric", "float8", "smallint", "timestamptz")
    values = ("g + {j}", "CASE WHEN g % 3 <> 0 THEN 'v' || g % 97 END", "CASE WHEN (g + {j}) % 3 = 0 THEN g END",
              "g % 2 = 0", "(g % 1000) / 7.0", "NULL", "(g % 100)::smallint", "now()")
    wide = ", ".join(f"c{j} {kinds[j % 8]}" for j in range(1, WIDE_COLUMNS + 1))
    wide_values = ", ".join(values[j % 8].format(j=j) for j in range(1, WIDE_COLUMNS + 1))
    return VARIED.format(wide=wide, wide_values=wide_values)


def picked(cur: psycopg.Cursor) -> str:
    """Every relation outside the system schemas, as a pick's ids."""
    cur.execute("SELECT pg_catalog.array_agg(c.oid)::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')")
    row = cur.fetchone()
    assert row is not None
    return str(row[0])


def estimates(dsn: str, sql_by_query: dict[str, str]) -> dict[str, list[tuple]]:
    """Each estimate query's rows, every relation of the database picked, with the search_path of a pack query."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SET search_path = pg_catalog, pg_temp")
        out = {}
        for name, sql in sql_by_query.items():
            cur.execute(sql.replace(PICKED_PLACEHOLDER, f"'{picked(cur)}'"))
            out[name] = sorted(cur.fetchall())
        return out


def shipped_sql() -> dict[str, str]:
    doc = yaml.safe_load((PACKS_DIR / "bloat.yaml").read_text())
    return {q["name"]: q["sql"] for q in doc["queries"]}


@pytest.fixture(scope="module")
def varied_db(major_cluster) -> Iterator[tuple[str, str]]:
    """The varied schema on each major, vacuumed and analyzed but for a column added afterwards: (superuser DSN,
    reader DSN)."""
    name = "t_bloat_v_" + uuid.uuid4().hex[:8]
    dsn = major_cluster.create_database(name)
    major_cluster.execute(varied_schema(), name)
    major_cluster.execute("VACUUM ANALYZE", name)
    major_cluster.execute("ALTER TABLE app.late ADD COLUMN extra int", name)
    major_cluster.execute(f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN CREATE ROLE {READER} LOGIN; END IF;
        END $$; GRANT pg_monitor TO {READER}""")
    major_cluster.execute(f"GRANT USAGE ON SCHEMA app, other TO {READER}; GRANT SELECT ON ALL TABLES IN SCHEMA app"
                          f" TO {READER}; GRANT SELECT (id, code) ON other.orders TO {READER}", name)
    yield dsn, dsn.replace("postgres@", f"{READER}@", 1)
    major_cluster.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.parametrize("role", ["superuser", "reader"])
def test_shipped_sql_estimates_exactly_what_the_reference_does(varied_db, role):
    """The queries made linear return the reference's rows, value for value, on every major and whatever the
    role may read; the cases the estimate leaves out are left out by both."""
    dsn = varied_db[0] if role == "superuser" else varied_db[1]
    reference = yaml.safe_load(REFERENCE.read_text())["queries"]
    assert set(reference) == set(shipped_sql())
    shipped, expected = estimates(dsn, shipped_sql()), estimates(dsn, reference)
    assert shipped == expected
    tables = {row[2] for row in shipped["pg_bloat_table"]}
    indexes = {row[3] for row in shipped["pg_bloat_index"]}
    # the superuser sees every statistic; the reader none of other.orders' (two columns) nor app.secret's (RLS)
    both = {"wide", "parent", "child", "measures_1", "measures_2", "summary"}
    assert tables == (both | {"orders", "secret"} if role == "superuser" else both | {"orders"})
    assert ("other" in {row[1] for row in shipped["pg_bloat_table"]}) == (role == "superuser")
    assert {"orders_customer", "orders_note", "orders_created", "orders_twice", "late_pkey"} <= indexes
    assert not {"orders_lower", "orders_hash"} & indexes


def plan_rows(dsn: str, sql: str, tables: tuple[str, ...]) -> int:
    """Rows every node of the query's plan produced or filtered out, over all its loops, with `tables` picked:
    its work, whatever the machine's load."""
    def walk(node: dict) -> int:
        own = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
               + node.get("Rows Removed by Join Filter", 0)) * node.get("Actual Loops", 1)
        return int(own) + sum(walk(child) for child in node.get("Plans", ()))

    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SET search_path = pg_catalog, pg_temp")
        cur.execute("SELECT pg_catalog.array_agg(t::pg_catalog.regclass::pg_catalog.oid)::pg_catalog.text"
                    " FROM pg_catalog.unnest(%s::pg_catalog.text[]) AS t", (list(tables),))
        ids = cur.fetchone()
        assert ids is not None
        cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql.replace(PICKED_PLACEHOLDER, f"'{ids[0]}'"))
        plan = cur.fetchone()
        assert plan is not None
        return walk(plan[0][0]["Plan"])


def test_cost_is_linear_in_the_columns(cluster, fresh_db):
    """Tables of 1,600 columns: the shipped query's work doubles with a second one, a few dozen plan rows per
    column; the reference's plan handled millions of rows for one (each column against all of pg_stats, the walk
    against every picked column at each step)."""
    columns = ", ".join(f"c{j} {'int' if j % 3 else 'text'}" for j in range(1, 1600))
    values = ", ".join(f"g + {j}" if j % 3 else "CASE WHEN g % 2 = 0 THEN 'v' || g END" for j in range(1, 1600))
    db = fresh_db.rsplit("/", 1)[1]
    for table in ("wide_a", "wide_b"):
        cluster.execute(f"CREATE TABLE {table} (id int, {columns}) WITH (autovacuum_enabled = false);"
                        f"INSERT INTO {table} SELECT g, {values} FROM generate_series(1, 30) g", db)
    cluster.execute("VACUUM ANALYZE", db)
    shipped = shipped_sql()["pg_bloat_table"]
    assert len(estimates(fresh_db, {"pg_bloat_table": shipped})["pg_bloat_table"]) == 2
    reference = yaml.safe_load(REFERENCE.read_text())["queries"]["pg_bloat_table"]
    one = plan_rows(fresh_db, shipped, ("public.wide_a",))
    two = plan_rows(fresh_db, shipped, ("public.wide_a", "public.wide_b"))
    before = plan_rows(fresh_db, reference, ("public.wide_a",))
    print(f"\nplan rows, tables of 1,600 columns: shipped {one} for one, {two} for two; reference {before} for one")
    assert one <= 40 * 1600 and two <= 2.2 * one and before >= 50 * one
