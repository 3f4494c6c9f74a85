"""Shared fixtures: one real throwaway PostgreSQL 15 cluster for the session."""
from __future__ import annotations

import uuid

import pytest

from exporter.dev.throwaway import ThrowawayCluster


@pytest.fixture(scope="session")
def cluster():
    """A real PostgreSQL cluster with pg_stat_statements preloaded, shared by the whole session."""
    with ThrowawayCluster(settings={"max_connections": "200"}) as pg:
        pg.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield pg


@pytest.fixture
def fresh_db(cluster):
    """A new, empty database in the shared cluster; returns its superuser DSN."""
    name = "t_" + uuid.uuid4().hex[:10]
    dsn = cluster.create_database(name)
    yield dsn
    cluster.execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )
    cluster.execute(f'DROP DATABASE IF EXISTS "{name}"')


def config_for(dsns: dict[str, str] | str, queries: str = "", extra: str = "") -> "Config":
    """A config with the given target DSNs (name -> DSN), no shipped packs, and `queries` as YAML list items."""
    from exporter.config import parse_config

    if isinstance(dsns, str):
        dsns = {"db": dsns}
    targets = "".join(f"  {name}:\n    dsn: {dsn}\n" for name, dsn in dsns.items())
    body = f"collectors: []\ntargets:\n{targets}{extra}\n"
    if queries:
        body += "queries:\n" + queries
    return parse_config(body, source="test.yaml")


def parse_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples of an exposition, parsed back with prometheus_client's parser: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels) -> float | None:
    """The value of the one sample of `name` whose labels include `labels` (None when absent)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{len(found)} samples of {name} match {labels}"
    return found[0] if found else None
