"""The reader threads live as long as the config that made them: a reload stops them (positions saved) and
starts the new config's, which count on from the old counts when they read the same log the same way;
closing the exporter stops them. A server that cannot be reached does not stop a
file source with an explicit format."""
from __future__ import annotations

import json

from conftest import parse_exposition, sample, wait_until
from logsupport import csv_record

from exporter.config import parse_config
from exporter.server import Exporter, extra_collectors


def config(tmp_path, interval: str = "1s", collectors: str = "[]"):
    return parse_config(f"collectors: {collectors}\ntargets:\n  db:\n    dsn: postgresql://nobody@127.0.0.1:1/x?connect_timeout=1\n"
                        f"    log: {{source: file, format: csvlog, path: {tmp_path}, interval: {interval}, "
                        f"state_file: {tmp_path / 'state.json'}}}\n")


def log_deadlock(logs, follower, counted: int) -> None:
    """A deadlock written to the log, and read: the follower has counted `counted` of them."""
    with open(logs / "a.csv", "ab") as fh:
        fh.write(csv_record("deadlock detected", "ERROR", "40P01"))
    wait_until(lambda: follower.counters.simple.get("deadlocks") == counted, 20, f"deadlock {counted} counted")


def test_reload_and_close_stop_the_readers(tmp_path):
    first = config(tmp_path)
    exporter = Exporter(first, extra_collectors(first))
    try:
        old = exporter._extras[-1].followers[0]
        wait_until(lambda: old.counters.readable is None, 20, "the first read")
        log_deadlock(tmp_path, old, 1)
        text = exporter.metrics(5.0)
        samples = parse_exposition(text)
        assert sample(samples, "pg_log_deadlocks_total", target="db") == 1
        assert sample(samples, "pgvigil_log_source_errors_total", reason="server_connect") >= 1
        second = config(tmp_path, interval="2s")
        assert exporter.reload(second, extra_collectors(second))
        assert not old._thread.is_alive()
        saved = json.loads((tmp_path / "state.json").read_text())
        assert [p["offset"] for p in saved["files"].values()] == [(tmp_path / "a.csv").stat().st_size]
        new = exporter._extras[-1].followers[0]
        assert new is not old and new._thread.is_alive()
        # the log is read another way (its interval): a new count, which Prometheus reads as a reset
        assert sample(parse_exposition(exporter.metrics(5.0)), "pg_log_deadlocks_total", target="db") == 0
    finally:
        exporter.close()
    assert not new._thread.is_alive()


def test_a_reload_that_leaves_the_log_as_it_was_keeps_counting_from_the_old_counts(tmp_path):
    first = config(tmp_path)
    exporter = Exporter(first, extra_collectors(first))
    try:
        old = exporter._extras[-1].followers[0]
        wait_until(lambda: old.counters.readable is None, 20, "the first read")
        log_deadlock(tmp_path, old, 1)
        # another query, the same log: the reload must not reset pg_log_*
        second = config(tmp_path, collectors="[connections]")
        assert exporter.reload(second, extra_collectors(second))
        new = exporter._extras[-1].followers[0]
        assert new is not old and new._thread.is_alive() and not old._thread.is_alive()
        log_deadlock(tmp_path, new, 2)
        samples = parse_exposition(exporter.metrics(5.0))
        assert sample(samples, "pg_log_deadlocks_total", target="db") == 2  # each deadlock once
    finally:
        exporter.close()
