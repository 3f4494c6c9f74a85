"""HTTP endpoints over a real socket, against a real PostgreSQL."""
from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request

import pytest
from conftest import config_for, parse_exposition, sample

from exporter.dev.throwaway import free_port
from exporter.server import scrape_budget, start_server

QUERIES = """
  - {name: q, sql: "SELECT 1 AS x", metrics: {x: {}}}
  - {name: nap, sql: "SELECT pg_sleep(3) IS NULL AS x", allow_calls: [pg_sleep], targets: [up], metrics: {x: {}}}
"""


def get(url: str, headers: dict | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def server(fresh_db):
    config = config_for({"up": fresh_db, "down": f"postgresql://nobody@127.0.0.1:{free_port()}/x"}, QUERIES)
    handle = start_server(config)
    yield handle
    handle.stop()


def test_metrics_parse_back_and_honour_the_scrape_timeout_header(server):
    # 2.5 s announced: a 2 s budget, which the 3 s nap outlasts while the first scrape's connect,
    # server facts and `q` fit in it even on a busy machine (1.5 s left them a single second)
    status, content_type, body = get(server.url + "/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "2.5"})
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    samples = parse_exposition(body)
    assert sample(samples, "q_x", target="up") == 1
    assert sample(samples, "pg_up", target="down") == 0
    assert sample(samples, "pgvigil_query_late_total", query="nap") == 1  # the client's deadline: late, not failed
    assert sample(samples, "pgvigil_query_errors_total", query="nap", reason="timeout") == 0
    assert sample(samples, "pgvigil_build_info") == 1
    assert sample(samples, "process_resident_memory_bytes") > 0


def test_health_is_503_when_a_target_is_down(server):
    status, content_type, body = get(server.url + "/health")
    report = json.loads(body)
    assert status == 503 and content_type == "application/json"
    assert report["status"] == "degraded"
    assert report["targets"]["up"]["up"] is True and report["targets"]["up"]["rtt_seconds"] > 0
    assert report["targets"]["down"]["up"] is False and "127.0.0.1" in report["targets"]["down"]["error"]


def test_health_is_200_when_all_targets_are_up(fresh_db):
    handle = start_server(config_for(fresh_db))
    try:
        status, _, body = get(handle.url + "/health")
    finally:
        handle.stop()
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_probe_only_accepts_configured_targets(server):
    status, _, body = get(server.url + "/probe?target=up", {"X-Prometheus-Scrape-Timeout-Seconds": "1"})
    samples = parse_exposition(body)
    assert status == 200 and sample(samples, "q_x", target="up") == 1
    assert sample(samples, "pg_up", target="down") is None
    status, _, body = get(server.url + "/probe?target=postgresql://evil@10.0.0.1/x")
    assert status == 400 and "configured targets: down, up" in body


def test_landing_page_lists_targets_and_queries(server):
    get(server.url + "/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "1"})
    status, content_type, body = get(server.url + "/")
    assert status == 200 and content_type.startswith("text/html")
    assert "<td>up</td><td>q</td><td>1</td>" in body and "down: " in body
    assert get(server.url + "/nope")[0] == 404


@pytest.mark.parametrize("header, expected", [
    (None, 10.0), ("", 10.0), ("abc", 10.0), ("5", 4.5), ("60", 10.0), ("0.2", 0.1),
])
def test_scrape_budget(header, expected):
    assert scrape_budget(header, 10.0) == expected


def test_the_first_scrape_is_logged_with_its_duration_and_size(fresh_db, caplog):
    handle = start_server(config_for(fresh_db, '  - {name: q, sql: "SELECT 1 AS x", metrics: {x: {}}}\n'))
    try:
        with caplog.at_level("INFO", logger="exporter.server"):
            get(handle.url + "/metrics")
            get(handle.url + "/metrics")
    finally:
        handle.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "exporter.server"]
    assert messages[0] == "first scrape: running the queries of 1 target(s)"
    assert messages[1].startswith("first scrape done in ") and ": 1 of 1 queries succeeded, 1 series, " in messages[1]
    assert len([m for m in messages if m.startswith("first scrape")]) == 2  # the second scrape is not logged


def test_a_client_cutting_the_deadline_short_fails_no_query(fresh_db):
    """30 scrapes announcing 0.55 s counted 377 query timeouts on a healthy database, and any client could
    make PostgresExporterQueryFailing fire: a deadline the client shortens is not the database's failure."""
    config = config_for(fresh_db, "".join(f"  - {{name: q{i}, sql: 'SELECT {i} AS x', metrics: {{x: {{}}}}}}\n"
                                          for i in range(12)))
    handle = start_server(config)
    try:
        for _ in range(30):
            status, _, body = get(handle.url + "/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "0.55"})
            assert status == 200
        _, _, body = get(handle.url + "/metrics")  # the configured deadline: every result in
        samples = parse_exposition(body)
    finally:
        handle.stop()
    errors = {labels: value for (name, labels), value in samples.items() if name == "pgvigil_query_errors_total"}
    assert errors and all(value == 0 for value in errors.values()), errors
    assert all(sample(samples, f"q{i}_x") == i for i in range(12))


def test_answers_are_gzipped_when_the_client_asks(server):
    def fetch(method: str, encoding: str | None):
        request = urllib.request.Request(server.url + "/metrics", method=method,
                                         headers={"Accept-Encoding": encoding} if encoding else {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.headers, response.read()

    headers, packed = fetch("GET", "gzip, deflate")  # as Prometheus asks
    assert headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"
    assert int(headers["Content-Length"]) == len(packed)
    text = gzip.decompress(packed).decode()
    assert sample(parse_exposition(text), "q_x", target="up") == 1
    assert len(packed) * 3 < len(text)
    headers, plain = fetch("GET", "gzip;q=0, identity")
    assert headers["Content-Encoding"] is None and headers["Vary"] == "Accept-Encoding"
    assert sample(parse_exposition(plain.decode()), "q_x", target="up") == 1
    headers, nothing = fetch("HEAD", "gzip")
    assert nothing == b"" and headers["Content-Encoding"] == "gzip" and int(headers["Content-Length"]) > 0
    status, _, body = get(server.url + "/probe?target=nowhere", {"Accept-Encoding": "gzip"})  # small: as is
    assert status == 400 and body.startswith("unknown target")
