"""Hostile input, round 2: secrets in every output, what `check` knows without a database, damaged
backup state, and bad input that must end in one located line instead of a traceback.

Leaks are found by grepping everything pgvigil writes (check --connect, /metrics, /health, the
landing page, the log, config errors) for every 4-character piece of each generated password.
"""
from __future__ import annotations

import json
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from exporter.config import ConfigError, parse_config
from exporter.redaction import dsn_secrets, redact

PIECE = 4  # a leak is any run of this many characters of the password, as written or as parsed


@pytest.fixture(autouse=True)
def _root_logger_restored():
    """Commands run in process (CliRunner) set up logging on the root logger: later tests' caplog
    must not inherit their ERROR level or their handlers."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT = _closed_port()


def _passwords() -> list[str]:
    """Every printable ASCII character (space included), twice, between pieces no message would contain."""
    return [f"Qw7{c}Zx9Lm{c}2Vb" for c in string.printable if c not in "\t\n\r\x0b\x0c"]


def _keyword_quoted(password: str) -> str:
    return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _dsns() -> list[tuple[str, str]]:
    """(password, DSN) in four forms: URI raw and percent-encoded, key=value quoted and bare."""
    out = []
    for pw in _passwords():
        out += [(pw, f"postgresql://alice:{pw}@127.0.0.1:{PORT}/db?connect_timeout=2"),
                (pw, f"postgresql://alice:{urllib.parse.quote(pw, safe='')}@127.0.0.1:{PORT}/db"),
                (pw, f"host=127.0.0.1 port={PORT} user=alice password={_keyword_quoted(pw)} dbname=db"),
                (pw, f"host=127.0.0.1 port={PORT} user=alice password={pw} dbname=db")]
    return out


DSNS = _dsns()


def _pieces(password: str, dsn: str) -> set[str]:
    """Every PIECE-character run of the password as parsed and as written in the DSN."""
    pieces = set()
    for secret in {password, *dsn_secrets(dsn)}:
        pieces |= {secret[i:i + PIECE] for i in range(len(secret) - PIECE + 1)}
    return pieces


def _leaks(text: str, dsns: list[tuple[str, str]] = DSNS) -> list[str]:
    return sorted({f"{piece!r} of {dsn!r}" for pw, dsn in dsns for piece in _pieces(pw, dsn) if piece in text})


def _config_text(dsns: list[tuple[str, str]]) -> str:
    targets = "".join(f"  t{i}:\n    dsn: {json.dumps(dsn)}\n" for i, (_, dsn) in enumerate(dsns))
    return ("collectors: []\ndefaults:\n  connect_timeout: 2s\n  scrape_timeout: 60s\n"
            f"targets:\n{targets}queries:\n  - name: q\n    sql: SELECT 1 AS v\n    metrics:\n      v: {{}}\n")


def test_generated_passwords_are_many_and_varied():
    assert len(DSNS) == 4 * 95
    assert any('"' in pw for pw, _ in DSNS) and any(" " in pw for pw, _ in DSNS)


@pytest.mark.parametrize("password,dsn", DSNS, ids=range(len(DSNS)))
def test_redact_masks_every_piece_of_the_password_in_a_message(password, dsn):
    message = f'invalid dsn: bad token: "{password}" at {dsn} ({urllib.parse.quote(password)})'
    assert _leaks(redact(message, dsn_secrets(dsn)), [(password, dsn)]) == []


def test_check_connect_shows_no_piece_of_any_password(tmp_path):
    path = tmp_path / "pgvigil.yaml"
    path.write_text(_config_text(DSNS))
    done = subprocess.run([sys.executable, "-m", "exporter", "check", "--config", str(path), "--connect"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert done.stdout.count("unreachable:") == len(DSNS), done.stdout[-2000:]
    assert "Traceback" not in done.stderr
    assert _leaks(done.stdout + done.stderr) == []


def _get(url: str) -> str:
    try:
        return urllib.request.urlopen(url, timeout=120).read().decode()
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def test_serve_outputs_show_no_piece_of_any_password(tmp_path):
    """/metrics, /health, the landing page and the log, with every target failing with its own password."""
    path = tmp_path / "pgvigil.yaml"
    path.write_text(_config_text(DSNS))
    port = _closed_port()
    log_path = tmp_path / "serve.log"  # a file, not a pipe: a debug log would fill a pipe nobody reads yet
    with log_path.open("w") as log_file:
        serve = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(path),
                                  "--listen", f"127.0.0.1:{port}", "--log-level", "debug"], stderr=log_file)
        try:
            outputs = [_wait_for(f"http://127.0.0.1:{port}/metrics")]
            outputs += [_get(f"http://127.0.0.1:{port}{page}") for page in ("/health", "/", "/metrics")]
        finally:
            serve.terminate()
            serve.wait(30)
    log = log_path.read_text()
    assert "pg_up" in outputs[0]
    assert "unreachable" in outputs[1] or "invalid connection string" in outputs[1], outputs[1][:1000]
    assert "Traceback" not in log
    assert _leaks("\n".join(outputs) + log) == []


def _wait_for(url: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            return _get(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("key", ["targets", "listen", "defaults", "collectors", "queries"])
def test_a_dsn_where_something_else_was_expected_is_not_echoed(key):
    errors = []
    for _, dsn in DSNS:
        with pytest.raises(ConfigError) as caught:
            parse_config(f"{key}: {json.dumps(dsn)}\n" + ("" if key == "collectors" else "collectors: []\n"),
                         source="c.yaml")
        errors += caught.value.errors
    assert all("not shown" in e for e in errors), errors[:3]
    assert _leaks("\n".join(errors)) == []


@pytest.mark.parametrize("key", ["pool_size", "labels", "storage_allocation", "dsn_file", "nonsense"])
def test_a_dsn_in_a_target_key_is_not_echoed(key):
    errors = []
    for _, dsn in DSNS:
        text = f"collectors: []\ntargets:\n  t:\n    dsn: host=h\n    {key}: {json.dumps(dsn)}\n"
        if key == "nonsense":  # the DSN as a key name
            text = f"collectors: []\ntargets:\n  t:\n    dsn: host=h\n    {json.dumps(dsn)}: 1\n"
        try:
            parse_config(text, source="c.yaml")
        except ConfigError as exc:
            errors += exc.errors
    assert errors
    assert _leaks("\n".join(errors)) == []


def test_a_dsn_in_query_targets_and_as_target_name_is_not_echoed():
    errors = []
    for _, dsn in DSNS:
        for text in (f"collectors: []\nqueries:\n  - name: q\n    sql: SELECT 1 AS v\n"
                     f"    targets: [{json.dumps(dsn)}]\n    metrics:\n      v: {{}}\n",
                     f"collectors: []\ntargets:\n  {json.dumps(dsn)}: host=h\n"):
            with pytest.raises(ConfigError) as caught:
                parse_config(text, source="c.yaml")
            errors += caught.value.errors
    assert _leaks("\n".join(errors)) == []


# -- check knows everything it can without a database, in one pass -----------------------------------

def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config("collectors: []\n" + text, source="c.yaml")
    return caught.value.errors


QUERY = "  - name: {name}\n    sql: SELECT 1 AS v\n    metrics:\n      v: {metric}\n"


def test_every_config_error_is_reported_in_one_pass():
    text = ("targets:\n  main: host=h\nqueries:\n"
            "  - name: q\n    sql: SELECT 1 AS v\n    targets: [mian]\n    metrics:\n      v: {type: gauge}\n"
            "  - name: q\n    sql: SELECT 1 AS v\n    metrics:\n      v: {type: gauje}\n")
    assert _errors(text) == [
        "c.yaml:7: queries[0].targets: unknown target 'mian'; configured: main",
        "c.yaml:10: queries[1]: query name 'q' is used twice",
        "c.yaml:13: queries[1].metrics.v.type: expected one of gauge, counter, histogram, gauge_histogram, "
        "got the string 'gauje'; did you mean 'gauge'?",
    ]


@pytest.mark.parametrize("text,expected", [
    ("targets:\n  a:\n    dsn: host=x\n    dsn: host=y\n",
     "c.yaml:5: targets.a.dsn: key given twice (first on line 4); give it once"),
    ("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n",
     "c.yaml:3: listen: key given twice (first on line 2); give it once"),
    ("queries:\n  - name: q\n    sql: SELECT 1 AS v, 'x' AS a\n    labels: [a, a]\n    metrics:\n      v: {}\n",
     "c.yaml:5: queries[0].labels[1]: label 'a' is listed twice"),
    ("queries:\n  - name: |\n      q\n    sql: SELECT 1 AS v\n    metrics:\n      v: {}\n",
     "c.yaml:3: queries[0].name: expected a name matching [a-zA-Z_:][a-zA-Z0-9_:]*, got the string 'q\\n'"),
    ("queries:\n  - name: q\n    sql: SELECT 1 AS v\n    labels: [\"a\\n\"]\n    metrics:\n      v: {}\n",
     "c.yaml:5: queries[0].labels[0]: 'a\\n' is not a valid label name"),
    ("queries:\n  - name: q\n    sql: SELECT 1 AS v\n    metrics:\n      v: {name: \"m\\n\"}\n",
     "c.yaml:6: queries[0].metrics.v.name: expected a metric name matching [a-zA-Z_:][a-zA-Z0-9_:]*, "
     "got the string 'm\\n'"),
    ("targets:\n  \"a\\n\": host=h\n",
     "c.yaml:3: targets.'a\\n': expected a target name of letters, digits, '_', '-' or '.'"),
    ("queries:\n  - name: q\n    sql: SELECT 1 AS v\n    metrics: {}\n",
     "c.yaml:5: queries[0].metrics: expected a mapping of column name to metric, with at least one metric, "
     "got an empty mapping"),
])
def test_what_prometheus_would_reject_is_a_config_error(text, expected):
    assert expected in _errors(text)


RESERVED = "(pg_up, pgbouncer_up, pg_exporter_last_scrape_error, pgvigil_*, process_*, python_*)"


@pytest.mark.parametrize("metrics,expected", [
    (["{name: pg_up}"], f"metric 'pg_up' writes 'pg_up', a name pgvigil itself exports {RESERVED}"),
    (["{name: pgvigil_query_success}"],
     f"metric 'pgvigil_query_success' writes 'pgvigil_query_success', a name pgvigil itself exports {RESERVED}"),
    (["{name: process_cpu_seconds_total}"], "metric 'process_cpu_seconds_total' writes 'process_cpu_seconds_total', "
                                            f"a name pgvigil itself exports {RESERVED}"),
    (["{name: python_info, type: counter}"],
     f"metric 'python_info' writes 'python_info', a name pgvigil itself exports {RESERVED}"),
    (["{name: process, type: histogram, buckets: [1]}"],
     f"metric 'process' writes 'process_bucket', a name pgvigil itself exports {RESERVED}"),
    (["{name: x, type: histogram, buckets: [1]}", "{name: x_count}"],
     "metric 'x_count' writes series 'x_count', which histogram 'x' of query 'q0' also writes"),
    (["{name: x_sum}", "{name: x, type: histogram, buckets: [1]}"],
     "metric 'x' writes series 'x_sum', which gauge 'x_sum' of query 'q0' also writes"),
    (["{name: y, type: gauge_histogram, buckets: [1]}", "{name: y_gcount, type: counter}"],
     "metric 'y_gcount' writes series 'y_gcount', which gauge_histogram 'y' of query 'q0' also writes"),
    (["{name: z}", "{name: z, type: counter}"], "metric 'z' is also produced by query 'q0'"),
])
def test_metric_names_colliding_with_pgvigil_or_each_other(metrics, expected):
    text = "queries:\n" + "".join(QUERY.format(name=f"q{i}", metric=m) for i, m in enumerate(metrics))
    errors = _errors(text)
    assert len(errors) == 1 and errors[0].endswith(expected), errors


def test_the_shipped_packs_collide_with_nothing():
    from exporter.config import available_packs

    config = parse_config(f"collectors: [{', '.join(available_packs())}]\n", source="c.yaml")
    assert len(config.queries) > 50


def test_duplicated_key_in_the_web_config():
    from exporter.webconfig import WebConfigError, parse_web_config

    with pytest.raises(WebConfigError) as caught:
        parse_web_config("basic_auth_users:\n  a: x\nbasic_auth_users:\n  b: y\n", source="web.yml")
    assert "web.yml:3: basic_auth_users: key given twice (first on line 1); give it once" in caught.value.errors


# -- what only a database shows: check --connect, NULL labels, infinite timestamps --------------------

def _check_connect(tmp_path: Path, dsn: str, queries: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from exporter.cli import main

    path = tmp_path / "pgvigil.yaml"
    path.write_text(f"collectors: []\ntargets:\n  db: {json.dumps(dsn)}\nqueries:\n{queries}")
    result = CliRunner().invoke(main, ["check", "--config", str(path), "--connect"], catch_exceptions=False)
    return result.exit_code, result.output


def test_check_connect_reports_rows_pgvigil_cannot_export(fresh_db, tmp_path):
    queries = (
        "  - name: clean\n    sql: SELECT 1 AS v\n    metrics:\n      v: {}\n"
        "  - name: texty\n    sql: SELECT 'abc'::text AS v\n    metrics:\n      v: {}\n"
        "  - name: twice\n    sql: SELECT 'a' AS k, 1 AS v UNION ALL SELECT 'a', 2\n    labels: [k]\n"
        "    metrics:\n      v: {}\n"
        "  - name: many\n    sql: SELECT g::text AS k, g AS v FROM generate_series(1, 5) g\n    labels: [k]\n"
        "    max_series: 2\n    metrics:\n      v: {}\n"
    )
    code, output = _check_connect(tmp_path, fresh_db, queries)
    assert code == 1, output
    lines = {line.split()[1]: line for line in output.splitlines() if line.startswith("db ")}
    assert lines["clean"].rstrip().endswith("ms"), lines["clean"]
    assert "1 invalid_value: column v: expected a number, got str" in lines["texty"]
    assert "1 duplicate" in lines["twice"]
    assert "cardinality" in lines["many"]


def test_check_connect_exits_zero_when_every_row_exports(fresh_db, tmp_path):
    code, output = _check_connect(tmp_path, fresh_db, "  - name: clean\n    sql: SELECT 1 AS v\n    metrics:\n"
                                                      "      v: {}\n")
    assert code == 0, output


@pytest.mark.parametrize("sql", [
    "SELECT NULL::text AS k, 1 AS v UNION ALL SELECT '', 2",
    "SELECT '' AS k, 1 AS v UNION ALL SELECT NULL::text, 2",
    "SELECT 'x' AS j, NULL::text AS k, 1 AS v UNION ALL SELECT 'x', '', 2",
])
def test_a_null_label_and_an_empty_label_are_one_series(fresh_db, sql):
    from conftest import config_for, parse_exposition

    from exporter.scrape.assembly import scrape_once

    labels = "[j, k]" if " AS j" in sql else "[k]"
    config = config_for(fresh_db, f"  - name: q\n    sql: {sql}\n    labels: {labels}\n    metrics:\n      v: {{}}\n")
    text = scrape_once(config)
    lines = [line for line in text.splitlines() if line.startswith("q_v{")]
    assert len(lines) == 1, lines
    parse_exposition(text)  # Prometheus' parser accepts it
    assert 'pgvigil_query_errors_total{target="db",query="q",reason="duplicate"} 1' in text


@pytest.mark.parametrize("sql,expected", [
    ("SELECT 'infinity'::timestamptz AS v", "+Inf"),
    ("SELECT '-infinity'::timestamptz AS v", "-Inf"),
    ("SELECT 'infinity'::timestamp AS v", "+Inf"),
    ("SELECT 'infinity'::date AS v", "+Inf"),
    ("SELECT '-infinity'::date AS v", "-Inf"),
    ("SELECT '2020-01-01 00:00:00+00'::timestamptz AS v", "1.5778368e+09"),
])
def test_infinite_timestamps_export_as_infinity(fresh_db, sql, expected):
    from conftest import config_for

    from exporter.scrape.assembly import scrape_once

    text = scrape_once(config_for(fresh_db, f"  - name: q\n    sql: {sql}\n    metrics:\n      v: {{}}\n"))
    assert f'q_v{{target="db"}} {expected}\n' in text, text


# -- a damaged backup state file fails the backup collector alone ------------------------------------

DAMAGE = "it is rewritten whole on every change, so this file was edited or damaged"
DAMAGED_STATES = {
    "count as text": (b'{"format": 1, "targets": {"primary": {"failures_total": "three"}}, "backups": []}',
                      'is damaged: targets.primary.failures_total: expected a count, got "three"'),
    "empty entry": (b'{"format": 1, "targets": {}, "backups": [{}]}',
                    "is damaged: backups[0]: missing name (and 3 more)"),
    "targets a list": (b'{"format": 1, "targets": [], "backups": []}',
                       "is damaged: targets: expected a mapping of target name to record, got []"),
    "pid as text": (b'{"format": 1, "targets": {}, "backups": [{"name": "b", "target": "primary", '
                    b'"status": "running", "started": 1, "pid": "abc"}]}',
                    'is damaged: backups[0].pid: expected a process id, got "abc"'),
    "file outside the directory": (b'{"format": 1, "targets": {}, "backups": [{"name": "b", "target": "primary", '
                                   b'"status": "failed", "started": 1, "files": {"dump": "/etc/passwd"}}]}',
                                   'is damaged: backups[0].files: expected a mapping of file names, '
                                   'got {"dump": "/etc/passwd"}'),
    "invalid UTF-8": (b'{"format": 1, "targets": {"prim\xffary": {}}, "backups": []}', "is not UTF-8 (byte 31)"),
}


@pytest.mark.parametrize("command", [["status"], ["prune", "--keep-last", "1"], ["verify"],
                                     ["run", "--dsn", f"host=127.0.0.1 port={PORT} dbname=x"]],
                         ids=lambda c: c[0])
@pytest.mark.parametrize("damage", DAMAGED_STATES, ids=str)
def test_backup_commands_name_the_damaged_state_file(tmp_path, command, damage):
    from click.testing import CliRunner

    from exporter.backup.state import STATE_NAME
    from exporter.cli import main

    content, problem = DAMAGED_STATES[damage]
    (tmp_path / STATE_NAME).write_bytes(content)
    result = CliRunner().invoke(main, ["backup", *command, "--dir", str(tmp_path), "--target", "primary"],
                                catch_exceptions=False)
    assert result.exit_code == 1
    assert result.output == f"Error: the backup state {tmp_path / STATE_NAME} {problem}; {DAMAGE}\n"
    assert (tmp_path / STATE_NAME).read_bytes() == content  # nothing rewrote it


@pytest.mark.parametrize("damage", DAMAGED_STATES, ids=str)
def test_a_damaged_state_file_leaves_the_scrape_whole(tmp_path, caplog, damage):
    from conftest import config_for, parse_exposition

    from exporter.backup.state import STATE_NAME
    from exporter.server import extra_collectors, start_server

    (tmp_path / STATE_NAME).write_bytes(DAMAGED_STATES[damage][0])
    config = config_for(f"host=127.0.0.1 port={PORT} dbname=x",
                        "  - name: q\n    sql: SELECT 1 AS v\n    metrics:\n      v: {}\n",
                        extra=f"backup:\n  dir: {tmp_path}\n  target: db\n")
    handle = start_server(config, extra_collectors=extra_collectors(config))
    try:
        texts = [urllib.request.urlopen(handle.url + "/metrics", timeout=30).read().decode() for _ in range(2)]
    finally:
        handle.stop()
    samples = parse_exposition(texts[1])
    assert samples[("pg_up", frozenset({("target", "db")}))] == 0.0
    assert samples[("pgvigil_backup_configured", frozenset({("target", "db")}))] == 1.0
    assert samples[("pgvigil_backup_state_errors_total", frozenset({("target", "db")}))] == 2.0
    logged = [r.getMessage() for r in caplog.records if "backup metrics unavailable" in r.getMessage()]
    assert len(logged) == 1 and DAMAGED_STATES[damage][1] in logged[0], logged


# -- bad input ends in one located line, never a traceback ------------------------------------------

def _cli(*args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("command,header", [
    (["check", "--config"], "invalid configuration (1 error):\n  "),
    (["serve", "--web-config"], "invalid web config (1 error):\n  "),
    (["bundle", "--out", "{out}", "--thresholds"], "error: "),
    (["bundle", "--out", "{out}", "--objectives"], "error: "),
], ids=["config", "web config", "thresholds", "objectives"])
def test_a_file_that_is_not_utf8_is_located(tmp_path, command, header):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"# fine\nkey: \"caf\xe9\"\n")
    code, output = _cli(*[part.replace("{out}", str(tmp_path / "out")) for part in command], str(path))
    assert code == 1
    assert output == f"{header}{path}:2: not UTF-8 text: byte 0xe9 at column 10; save the file as UTF-8\n"
    assert not (tmp_path / "out").exists()


LISTEN = "expected host:port such as 127.0.0.1:9187 (a port from 0 to 65535)"


@pytest.mark.parametrize("listen", ["127.0.0.1:²", "127.0.0.1:99999", "foo", "127.0.0.1:", "127.0.0.1:-1"])
def test_a_bad_listen_address_is_one_line(tmp_path, listen):
    path = tmp_path / "c.yaml"
    path.write_text(f"collectors: []\nlisten: {json.dumps(listen)}\n", encoding="utf-8")
    assert _cli("check", "--config", str(path)) == (
        1, f"invalid configuration (1 error):\n  {path}:2: listen: {LISTEN}, got the string {listen!r}\n")
    assert _cli("serve", "--listen", listen) == (
        2, f"invalid --listen (or PGVIGIL_LISTEN): {LISTEN}, got the string {listen!r}\n")


@pytest.fixture
def mount_tmpfs(tmp_path):
    """A tmpfs of a few pages (a full disk) or a read-only one; skipped where mounting is not allowed."""
    mounted = []

    def mount(options: str) -> Path:
        path = tmp_path / f"mnt{len(mounted)}"
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_bundle_into_a_read_only_directory(mount_tmpfs):
    out = mount_tmpfs("ro,size=64k")
    assert _cli("bundle", "--out", str(out)) == (1, f"error: cannot write {out}/alerts: Read-only file system\n")
    assert list(out.iterdir()) == []


def test_bundle_into_a_full_disk_leaves_nothing(mount_tmpfs):
    out = mount_tmpfs("size=64k")
    code, output = _cli("bundle", "--out", str(out))
    assert code == 1
    assert output.startswith(f"error: cannot write {out}/") and output.endswith(": No space left on device\n")
    assert output.count("\n") == 1
    assert list(out.iterdir()) == []


@pytest.fixture
def big_db(cluster, fresh_db):
    """A database whose dump does not fit a 64 KB disk."""
    from backup_support import dbname_of

    cluster.execute("CREATE TABLE filler AS SELECT g, md5(g::text) || md5((g * 7)::text) AS t "
                    "FROM generate_series(1, 20000) g", dbname_of(fresh_db))
    return fresh_db


def _backup_run(dsn: str, directory: Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from exporter.cli import main

    result = CliRunner().invoke(main, ["backup", "run", "--dsn", dsn, "--dir", str(directory), "--target", "primary",
                                       "--no-progress"], catch_exceptions=False)
    return result.exit_code, result.output


def test_backup_run_into_a_full_disk(big_db, mount_tmpfs):
    from exporter.backup.state import STATE_NAME, StateFile

    directory = mount_tmpfs("size=64k")
    code, output = _backup_run(big_db, directory)
    assert code == 1
    name = StateFile(directory).read()["backups"][0]["name"]
    assert output == f"Error: cannot write {directory}/.{name}.dump.partial: No space left on device\n"
    assert sorted(p.name for p in directory.iterdir()) == [".pgvigil-backup-state.lock", STATE_NAME]
    entry = StateFile(directory).read()["backups"][0]
    assert entry["status"] == "failed" and "No space left on device" in entry["error"]


def test_backup_run_into_a_read_only_directory(big_db, mount_tmpfs):
    directory = mount_tmpfs("ro,size=64k")
    assert _backup_run(big_db, directory) == (
        1, f"Error: cannot write the backup state in {directory}: Read-only file system\n")
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("duration,message", [
    ("5m5h", "units go from the largest to the smallest, each at most once (y, w, d, h, m, s, ms), got '5m5h'"),
    ("1h1h", "units go from the largest to the smallest, each at most once (y, w, d, h, m, s, ms), got '1h1h'"),
    ("99999999999y", "'99999999999y' is longer than Prometheus can represent (about 292 years)"),
    ("293y", "'293y' is longer than Prometheus can represent (about 292 years)"),
    ("5 m", "expected a Prometheus duration such as 5m or 1h30m, got '5 m'"),
    ("5m\n", "expected a Prometheus duration such as 5m or 1h30m, got '5m\\n'"),
])
def test_a_for_duration_prometheus_cannot_represent(tmp_path, duration, message):
    from exporter.bundle.thresholds import DEFAULT_THRESHOLDS

    text = DEFAULT_THRESHOLDS.read_text(encoding="utf-8")
    first = text.index("\n  for: ") + 1
    line = text.count("\n", 0, first) + 1
    end = text.index("\n", first)
    path = tmp_path / "thresholds.yaml"
    path.write_text(text[:first] + f"  for: {json.dumps(duration)}" + text[end:], encoding="utf-8")
    name = [ln for ln in text[:first].splitlines() if ln and not ln.startswith((" ", "#"))][-1].split(":")[0]
    code, output = _cli("bundle", "--thresholds", str(path), "--out", str(tmp_path / "out"))
    assert (code, output) == (1, f"error: {path}:{line}: {name}.for: {message}\n")
    assert not (tmp_path / "out").exists()


def test_292_years_is_still_a_duration():
    from exporter.bundle.thresholds import duration_problem

    assert duration_problem("292y") is None and duration_problem("1y2w3d4h5m6s7ms") is None
    assert duration_problem("0") is None


def test_backup_run_with_a_dsn_libpq_cannot_parse(tmp_path):
    code, output = _backup_run('postgresql://u:7%Hq"Zx9Lm2Vb@127.0.0.1:1/db', tmp_path)
    assert (code, output) == (1, "Error: the DSN is not a valid PostgreSQL connection string\n")
    assert list(tmp_path.iterdir()) == []


def test_a_bcrypt_hash_with_a_trailing_newline_is_rejected_at_load():
    from exporter.webconfig import WebConfigError, hash_password, parse_web_config

    with pytest.raises(WebConfigError) as caught:
        parse_web_config(f"basic_auth_users:\n  a: {json.dumps(hash_password('x', cost=4) + chr(10))}\n",
                         source="web.yml")
    assert len(caught.value.errors) == 1 and caught.value.errors[0].startswith("web.yml:2: basic_auth_users.a: ")
