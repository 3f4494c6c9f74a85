"""The pgvigil command line, run as a real process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import parse_exposition, sample, wait_until

from exporter.dev.throwaway import free_port


def pgvigil(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def write_config(tmp_path, dsn: str, queries: str = "") -> str:
    path = tmp_path / "pgvigil.yaml"
    path.write_text(f"collectors: []\ntargets:\n  db:\n    dsn: {dsn}\nqueries:\n"
                    + (queries or "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n"))
    return str(path)


def test_check_lists_every_error_and_exits_1(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("listen: 9187\nqueries:\n  - {name: q, sql: SELECT 1, metrics: {x: {type: gauge2}}}\n")
    result = pgvigil("check", "--config", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "invalid configuration (2 errors):",
        f"  {path}:1: listen: expected a string, got the number 9187",
        f"  {path}:3: queries[0].metrics.x.type: expected one of gauge, counter, histogram, gauge_histogram, "
        "got the string 'gauge2'; did you mean 'gauge'?",
    ]


def test_check_connect_prints_a_table(tmp_path, fresh_db):
    path = write_config(tmp_path, fresh_db, "  - {name: good, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n"
                                            "  - {name: bad, sql: 'SELECT 1/0 AS x', metrics: {x: {}}}\n")
    assert pgvigil("check", "--config", path).returncode == 0
    result = pgvigil("check", "--config", path, "--connect")
    assert result.stdout.splitlines()[0] == "config OK: 1 target, 2 queries (packs: none)"
    assert result.returncode == 1
    header, good, bad = result.stdout.splitlines()[1:4]
    assert header.split() == ["target", "query", "rows", "series", "duration", "error"]
    assert good.split()[:4] == ["db", "good", "1", "1"]
    assert bad.split()[:2] == ["db", "bad"] and bad.endswith("division by zero")


def test_serve_answers_and_stops_cleanly_on_sigterm(tmp_path, fresh_db, cluster):
    port = free_port()
    path = write_config(tmp_path, fresh_db, "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n"
                                            "  - {name: old_server_only, sql: 'SELECT 1 AS x', metrics: {x: {}}, "
                                            "max_server_version: 90600}\n")
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", path, "--log-format", "json"],
                            env={**os.environ, "PGVIGIL_LISTEN": f"127.0.0.1:{port}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        landing = _wait_for(f"http://127.0.0.1:{port}/")
        assert "<h2>Queries: 0 of 2 ran</h2><p>Not run yet on any target (2): q, old_server_only." in landing
        body = _wait_for(f"http://127.0.0.1:{port}/metrics")
        assert sample(parse_exposition(body), "q_x", target="db") == 1
        landing = _wait_for(f"http://127.0.0.1:{port}/")
        assert "<h2>Queries: 1 of 2 ran</h2><p>Not run yet on any target (1): old_server_only." in landing
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f'listening on 127.0.0.1:{port} with 1 target and 2 queries"' in stderr
    assert '"msg": "pgvigil stopped; database sessions closed"' in stderr
    dbname = fresh_db.rsplit("/", 1)[1]
    # pgvigil hung up before exiting; each backend leaves pg_stat_activity when it has exited, just after
    wait_until(lambda: cluster.execute(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{dbname}'"
                                       " AND application_name = 'pgvigil'") == [(0,)], 10,
               "pgvigil's database sessions to end")


def _wait_for(url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_self_metrics_dashboards_read_under_postgres_exporter_names(tmp_path, fresh_db):
    """grafana.com 9628's variables read pg_exporter_last_scrape_duration_seconds; postgres_exporter 0.20 adds
    pg_scrape_collector_* and its config-reload pair: served under its names and pgvigil's."""
    port = free_port()
    path = write_config(tmp_path, fresh_db, "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", path],
                            env={**os.environ, "PGVIGIL_LISTEN": f"127.0.0.1:{port}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/metrics")
        samples = parse_exposition(_wait_for(f"http://127.0.0.1:{port}/metrics"))
        assert sample(samples, "pg_exporter_scrapes_total") >= 1
        assert sample(samples, "pg_exporter_last_scrape_duration_seconds") > 0
        assert sample(samples, "pg_scrape_collector_success", target="db", collector="q") == 1
        assert sample(samples, "pg_scrape_collector_duration_seconds", target="db", collector="q") >= 0
        for prefix in ("pgvigil", "postgres_exporter"):
            assert sample(samples, f"{prefix}_config_last_reload_successful") == 1
            assert sample(samples, f"{prefix}_config_last_reload_success_timestamp_seconds") > 0
        Path(path).write_text("queries: [\n")  # a broken config: the reload is rejected
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: sample(parse_exposition(_wait_for(f"http://127.0.0.1:{port}/metrics")),
                                  "postgres_exporter_config_last_reload_successful") == 0, 10, "the rejected reload")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
