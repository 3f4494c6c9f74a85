"""Shared fixtures: one real throwaway PostgreSQL 15 cluster for the session."""
from __future__ import annotations

import uuid

import pytest

from exporter.throwaway import ThrowawayCluster


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
