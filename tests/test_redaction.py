"""Secrets out of text (exporter/redaction.py, and the one rule config errors follow: yamlsource.shown).

A value that may hold a secret is never echoed by a config error, whatever the key it was written
under: in `pgvigil check`'s output and in the log line of a rejected reload. And masking works from
structure: a password of one or two characters is masked where it stands as a password (a DSN's
password, a `password=`, a URI's userinfo), not wherever its characters occur in a log line.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from exporter.cli import main
from exporter.dev.throwaway import free_port
from exporter.logs import setup_logging
from exporter.redaction import dsn_secrets, may_hold_secret, redact

SECRET = "Zq9xK2pL7wTopS3cret"
# The shapes a credential is written in: a URI (pgvigil's scheme and another), a conninfo with a quoted
# password holding a space, a pgpass line.
VALUES = {
    "uri": f"postgresql://alice:{SECRET}@db.internal:5432/app",
    "conninfo": f"host=db.internal user=alice password='{SECRET} x' dbname=app",
    "other_scheme": f"mysql://alice:{SECRET}@db.internal/app",
    "pgpass": f"db.internal:5432:app:alice:{SECRET}",
}
V = "@V@"  # where the value goes in a case's YAML


def query(extra: str = "", **replace: str) -> str:
    """A valid query (labels [l], counter v) with `extra` keys; `replace` swaps a piece of it."""
    text = "queries:\n  - {name: q, sql: SELECT 1 AS v, labels: [l], metrics: {v: {type: counter}}" + extra + "}\n"
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


# (key, YAML with @V@ where the value goes, text that the key's error shows): every key whose error could echo.
CASES = [
    ("listen", "listen: @V@\n", "listen:"),
    ("collectors", "collectors: [@V@]\n", "collectors[0]:"),
    ("targets.<name>", "targets: {@V@: 'host=h'}\n", "targets.<key not shown>:"),
    ("targets.dsn_file", "targets: {t: {dsn_file: @V@}}\n", "targets.t.dsn_file:"),
    ("targets.labels.<name>", "targets: {t: {dsn: 'host=h', labels: {@V@: x}}}\n", "targets.t.labels."),
    ("targets.kind", "targets: {t: {dsn: 'host=h', kind: @V@}}\n", "targets.t.kind:"),
    ("targets.pool_size", "targets: {t: {dsn: 'host=h', pool_size: @V@}}\n", "targets.t.pool_size:"),
    ("targets.storage_allocation", "targets: {t: {dsn: 'host=h', storage_allocation: @V@}}\n",
     "targets.t.storage_allocation:"),
    ("targets.databases", "targets: {t: {dsn: 'host=h', databases: @V@}}\n", "targets.t.databases:"),
    ("targets.discovery_interval", "targets: {t: {dsn: 'host=h', databases: all, discovery_interval: @V@}}\n",
     "targets.t.discovery_interval:"),
    ("targets.<unknown key>", "targets: {t: {dsn: 'host=h', @V@: 1}}\n", "targets.t.<key not shown>:"),
    ("defaults.timeout", "defaults: {timeout: @V@}\n", "defaults.timeout:"),
    ("defaults.exclude_schemas", "defaults: {exclude_schemas: @V@}\n", "defaults.exclude_schemas:"),
    ("<unknown key>", "@V@: 1\n", "<key not shown>:"),
    ("queries", "queries: @V@\n", "queries:"),
    ("queries.name", query(**{"name: q": "name: @V@"}), "queries[0].name:"),
    ("queries.name twice", query(**{"name: q": "name: @V@"}) + query(**{"name: q": "name: @V@"})[9:],
     "queries[1]:"),
    ("queries.sql", query(**{"sql: SELECT 1 AS v": "sql: @V@"}), "queries[0].sql:"),
    ("queries.labels", query(**{"labels: [l]": "labels: [@V@]"}), "queries[0].labels[0]:"),
    ("queries.sql_labels", query(", sql_labels: [@V@]"), "queries[0].sql_labels[0]:"),
    ("queries.sql_labels (labels listed)", query(", sql_labels: [x]", **{"labels: [l]": "labels: [@V@]"}),
     "queries[0].sql_labels[0]:"),
    ("queries.top_changed.by", query(", top_changed: {by: @V@, limit: 5}"), "queries[0].top_changed.by:"),
    ("queries.top_changed.by (columns listed)", query(", top_changed: {by: x, limit: 5}", **{"{v: ": "{@V@: "}),
     "queries[0].top_changed.by:"),
    ("queries.targets", query(", targets: [@V@]"), "queries[0].targets:"),
    ("queries.scope", query(", scope: @V@"), "queries[0].scope:"),
    ("queries.kind", query(", kind: @V@"), "queries[0].kind:"),
    ("queries.ttl", query(", ttl: @V@"), "queries[0].ttl:"),
    ("queries.min_server_version", query(", min_server_version: @V@"), "queries[0].min_server_version:"),
    ("queries.pick.sql", query(", pick: {sql: @V@}"), "queries[0].pick"),
    ("queries.<unknown key>", query(", @V@: 1"), "queries[0].<key not shown>:"),
    ("queries.metrics.<column>", query(**{"labels: [l]": "labels: [@V@]", "{v: ": "{@V@: "}),
     "queries[0].metrics.<key not shown>"),
    ("queries.metrics.type", query(**{"type: counter": "type: @V@"}), "queries[0].metrics.v.type:"),
    ("queries.metrics.name", query(**{"type: counter": "name: @V@"}), "queries[0].metrics.v.name:"),
    ("queries.metrics.default", query(**{"type: counter": "default: @V@"}), "queries[0].metrics.v.default:"),
    ("queries.metrics.buckets", query(**{"type: counter": "type: histogram, buckets: [@V@]", "labels: [l], ": ""}),
     "queries[0].metrics.v.buckets[0]:"),
    ("backup.target", "targets: {t: 'host=h'}\nbackup: {dir: /tmp/pgvigil-backups, target: @V@}\n", "backup.target:"),
    ("backup.keep_days", "backup: {dir: /tmp/pgvigil-backups, keep_days: @V@}\n", "backup.keep_days:"),
    ("backup.s3", "backup: {dir: /tmp/pgvigil-backups, s3: @V@}\n", "backup.s3:"),
]


def config_text(template: str, value: str) -> str:
    text = template.replace(V, json.dumps(value))
    return text if text.startswith("collectors:") else "collectors: []\n" + text


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_every_shape_of_credential_may_hold_a_secret(value):
    assert may_hold_secret(value)


@pytest.mark.parametrize("key, template, where", CASES, ids=[case[0] for case in CASES])
def test_check_never_echoes_a_value_that_may_hold_a_secret(tmp_path, key, template, where):
    for shape, value in VALUES.items():
        path = tmp_path / f"{shape}.yaml"
        path.write_text(config_text(template, value))
        result = CliRunner().invoke(main, ["check", "--config", str(path)])
        assert result.exit_code == 1, (shape, result.output)
        assert where in result.output, (shape, result.output)
        assert SECRET not in result.output, (shape, result.output)
        assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    """`pgvigil serve` on a valid config, its stderr collected as it comes."""
    directory = tmp_path_factory.mktemp("reload")
    config = directory / "pgvigil.yaml"
    good = f"collectors: []\ntargets:\n  t: postgresql://alice:startup-pass@127.0.0.1:{free_port()}/x\n"
    config.write_text(good)
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(config),
                             "--listen", f"127.0.0.1:{free_port()}"], stderr=subprocess.PIPE)
    stderr: list[bytes] = []

    def read() -> None:
        while chunk := os.read(proc.stderr.fileno(), 65536):  # type: ignore[union-attr]
            stderr.append(chunk)

    threading.Thread(target=read, daemon=True).start()
    wait_for_log(proc, stderr, b"listening on", 1)
    yield config, proc, stderr
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def wait_for_log(proc: subprocess.Popen, stderr: list[bytes], marker: bytes, count: int, then: bytes = b"",
                 timeout: float = 30) -> str:
    """The log once it holds `marker` `count` times, and `then` after the last one."""
    deadline = time.monotonic() + timeout
    while True:
        logged = b"".join(stderr)
        if logged.count(marker) >= count and then in logged[logged.rindex(marker):]:
            return logged.decode()
        assert proc.poll() is None and time.monotonic() < deadline, logged.decode()[-3000:]
        time.sleep(0.02)


@pytest.mark.parametrize("key, template, where", CASES, ids=[case[0] for case in CASES])
def test_a_rejected_reload_never_logs_a_value_that_may_hold_a_secret(serving, key, template, where):
    config, proc, stderr = serving
    for shape, value in VALUES.items():
        before = b"".join(stderr).count(b"config reload rejected")
        config.write_text(config_text(template, value))
        os.kill(proc.pid, signal.SIGHUP)
        logged = wait_for_log(proc, stderr, b"config reload rejected", before + 1, where.encode())
        rejection = logged[logged.rindex("config reload rejected"):]
        assert where in rejection, (shape, rejection)
        assert SECRET not in logged, (shape, rejection)


# -- masking by structure ---------------------------------------------------------------------------------

ORDINARY_LINES = [
    "pgvigil 0.1.0 listening on 127.0.0.1:9187 with 1 target and 42 queries",
    "4 databases monitored, 2 skipped (template0, template1)",
    "config reloaded: 1 target, 120 queries",
    "first scrape done in 0.35s: 118 of 120 queries succeeded, 2041 series, 301 KiB",
    "query pg_stat_database on target a: division by zero",
]


@pytest.mark.parametrize("password", ["4", "a", "1", "s", "ab", "10", "db", ".1"])
def test_a_short_password_masks_structure_not_the_characters_of_every_line(password):
    dsn = f"postgresql://alice:{password}@127.0.0.1:5432/app"
    secrets = dsn_secrets(dsn)
    for line in ORDINARY_LINES:
        assert redact(line, secrets) == line
    assert redact(f"cannot connect to {dsn}", secrets) == "cannot connect to postgresql://alice:***@127.0.0.1:5432/app"
    assert redact(f"dsn: host=h password={password} dbname=x", secrets) == "dsn: host=h password=*** dbname=x"
    assert redact(f"dsn: host=h password='{password}' dbname=x", secrets) == "dsn: host=h password=*** dbname=x"


@pytest.mark.parametrize("password", ["data", "base", "monitored"])
def test_a_longer_password_is_masked_as_a_word_not_inside_other_words(password):
    secrets = dsn_secrets(f"host=h user=alice password={password}")
    assert redact("4 databases monitored", secrets) == (
        "4 databases ***" if password == "monitored" else "4 databases monitored")
    assert redact(f"the password is {password}.", secrets) == "the password is ***."


def test_a_long_secret_and_its_cut_pieces_are_masked_wherever_they_appear():
    password = "Qw7@Zx9Lm@2Vbq/Rt5"
    secrets = dsn_secrets(f"host=h password='{password}'")
    assert redact(f"token{password}tail", secrets) == "token***tail"  # 8+ characters: even inside a word
    # libpq cuts at the '@' and quotes the rest as a host name
    assert redact('could not translate host name "Zx9Lm@2Vbq/Rt5@127.0.0.1"', secrets) == (
        'could not translate host name "***@127.0.0.1"')
    assert redact("Zx9Lm and 2Vbq", secrets) == "*** and ***"
    assert redact("Zx9Lmx", secrets) == "Zx9Lmx"  # not a piece libpq could cut


def test_the_log_shows_ordinary_lines_whole_with_a_one_character_password(capsys):
    setup_logging("info", "text", dsn_secrets("postgresql://alice:4@127.0.0.1:5432/app"))
    try:
        log = logging.getLogger("pgvigil")
        log.info("pgvigil 0.1.0 listening on 127.0.0.1:9187 with 4 targets and 4 queries")
        log.info("4 databases monitored")
        log.info("connecting with host=127.0.0.1 password=4 dbname=app")
    finally:
        logging.getLogger().handlers[:] = []
    err = capsys.readouterr().err
    assert "listening on 127.0.0.1:9187 with 4 targets and 4 queries" in err
    assert "pgvigil: 4 databases monitored" in err
    assert "password=*** dbname=app" in err and "password=4" not in err


def test_serve_logs_whole_lines_with_a_one_character_password(tmp_path):
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"collectors: []\ntargets:\n  t: postgresql://alice:1@127.0.0.1:{free_port()}/x\n"
                      "queries:\n  - {name: q, sql: SELECT 1 AS v, metrics: {v: {}}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(config),
                             "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        while "listening on" not in line and line:
            line = proc.stderr.readline()  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert "listening on 127.0.0.1:0 with 1 target and 1 query" in line, line
