"""The bloat pack (exporter/packs/bloat.yaml): its estimate against pgstattuple's measure, and its blind spots.

Accuracy: tables of 10 MB or more of several shapes (narrow fixed-width rows, wide text rows,
nullable columns) and a btree index are filled, 30 % of their rows deleted, then VACUUMed (not
FULL) and ANALYZEd; pgvigil's estimate of the wasted bytes must be within 20 % of pgstattuple's
free plus dead bytes, and the test prints how close each shape came (`pytest -s`). On every
supported major, the estimate runs and lands near the known dead space of a smaller table.
"""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest
import yaml
from packs.exposition import Sample, find, parse_samples

from exporter.config import PACKS_DIR, parse_config
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
