"""Throwaway clusters logging in each format (logging_collector on), and pgvigil serving their logs."""
from __future__ import annotations

import contextlib
import logging
import urllib.request
from pathlib import Path
from typing import Iterator

import psycopg

from exporter.config import Config, parse_config
from exporter.dev.throwaway import ThrowawayCluster
from exporter.server import ServerHandle, extra_collectors, start_server

STDERR_PREFIX = "%m [%p] %q%u@%d "
PASSWORD = "Alice-Correct-Horse-1"


def logging_cluster(fmt: str, bindir: Path | None = None, **settings: str) -> ThrowawayCluster:
    """A started cluster writing `fmt` into log/ under its data directory, with scram-sha-256 for TCP logins."""
    conf = {"logging_collector": "on", "log_destination": f"'{fmt}'", "log_directory": "'log'",
            "lc_messages": "'C'", "log_connections": "on", "log_min_duration_statement": "200",
            "log_line_prefix": f"'{STDERR_PREFIX}'", "password_encryption": "'scram-sha-256'",
            "log_statement": "'ddl'", "log_rotation_size": "0", "log_rotation_age": "0"}
    conf.update(settings)
    pg = ThrowawayCluster(settings=conf, preload=(), bindir=bindir)
    try:
        pg.init()
        (pg.datadir / "pg_hba.conf").write_text(
            "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        pg.start()
        pg.execute(f"CREATE ROLE alice LOGIN PASSWORD '{PASSWORD}'")
        return pg
    except BaseException:
        pg.cleanup()
        raise


def log_config(pg: ThrowawayCluster, state: Path | None, source: str = "file", dsn: str | None = None,
               budget: str = "16MiB") -> Config:
    where = f"path: {pg.datadir / 'log'}, " if source == "file" else ""
    state_key = f"state_file: {state}, " if state else ""
    return parse_config(f"collectors: []\ntargets:\n  db:\n    dsn: '{dsn or pg.dsn()}'\n"
                        f"    log: {{source: {source}, {where}{state_key}interval: 1s, budget: {budget}}}\n")


@contextlib.contextmanager
def serving(config: Config) -> Iterator[ServerHandle]:
    handle = start_server(config, extra_collectors=extra_collectors(config))
    try:
        yield handle
    finally:
        handle.stop()


def metrics(handle: ServerHandle) -> str:
    with urllib.request.urlopen(handle.url + "/metrics", timeout=30) as answer:
        return answer.read().decode()


def wrong_logins(pg: ThrowawayCluster, user: str, count: int) -> None:
    for _ in range(count):
        try:
            psycopg.connect(pg.dsn(user=user, password="not-the-password"), connect_timeout=5).close()
        except psycopg.OperationalError:
            pass
        else:
            raise AssertionError("a wrong password was accepted")


def errors(pg: ThrowawayCluster, count: int, padding: int = 0) -> None:
    """`count` ERROR 22P02 entries (each statement `padding` bytes longer, to grow the log)."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for i in range(count):
            try:
                conn.execute(f"SELECT 'not a number {i} {'x' * padding}'::int")
            except psycopg.errors.InvalidTextRepresentation:
                pass


class Captured(logging.Handler):
    """pgvigil's own log lines, as text, for the leak checks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
