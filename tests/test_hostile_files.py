"""Hostile files: every file pgvigil reads is a regular file under its kind's cap, or one clear error.

A FIFO (reading it waits for a writer forever), a symlink to /dev/zero (reading it never ends), a
directory and a file past the cap are made for real, put where pgvigil reads a file (the config, a
`dsn_file`, the web config and its TLS files, the thresholds and objectives, the backup state, a backup's
dump, checksum and manifest), and the real command is run: one line naming the file and the problem,
the usual exit code, no traceback, no hang. The backup state is also fed JSON nested 100,000 deep,
NaN/Infinity, numbers past 64 bits and values out of their range while `pgvigil serve` answers
`/metrics` over HTTP: 200 within the deadline, the backup collector alone failing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import parse_exposition

from exporter.backup.state import STATE_NAME, BackupError, StateFile
from exporter.dev.throwaway import free_port
from exporter.files import (
    CHECKSUM_LIMIT,
    CONFIG_LIMIT,
    MANIFEST_LIMIT,
    PEM_LIMIT,
    SECRET_LIMIT,
    STATE_LIMIT,
    UnreadableFile,
    loads_json,
    read_limited,
)

DEADLINE = 10.0  # seconds: a hang is a failure, not a slow test
DAMAGE = "it is rewritten whole on every change, so this file was edited or damaged"


# -- making hostile files, and removing them ---------------------------------------------------------

# The caps of docs/security.md ("Files"), as messages name them.
CAPS = {CONFIG_LIMIT: "4 MiB", SECRET_LIMIT: "64 KiB", PEM_LIMIT: "1 MiB", STATE_LIMIT: "16 MiB",
        MANIFEST_LIMIT: "64 MiB", CHECKSUM_LIMIT: "64 KiB"}


def oversized(limit: int) -> Callable[[Path], str]:
    def make(path: Path) -> str:
        with open(path, "wb") as fh:  # sparse: the size is what is checked, before a byte is read
            fh.truncate(limit + 1)
        return f"{limit + 1:,} bytes, over the {CAPS[limit]} limit"
    return make


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "not a regular file (a named pipe)"


def _dev_zero(path: Path) -> str:
    path.symlink_to("/dev/zero")
    return "not a regular file (a character device)"


def _directory(path: Path) -> str:
    path.mkdir()
    return "not a regular file (a directory)"


def _fifo_behind_symlink(path: Path) -> str:
    os.mkfifo(path.with_name(path.name + ".fifo"))
    path.symlink_to(path.name + ".fifo")
    return "not a regular file (a named pipe)"


def _dangling(path: Path) -> str:
    path.symlink_to(path.name + ".gone")
    return "no such file"


KINDS: dict[str, Callable[[Path], str]] = {
    "fifo": _fifo, "symlink to /dev/zero": _dev_zero, "directory": _directory,
    "symlink to a fifo": _fifo_behind_symlink, "dangling symlink": _dangling,
}


@pytest.fixture
def hostile(tmp_path):
    """make(path, kind or maker) -> the reason pgvigil must give; everything made is removed afterwards."""
    made: list[Path] = []

    def make(path: Path, kind: str | Callable[[Path], str]) -> str:
        maker = KINDS[kind] if isinstance(kind, str) else kind
        made.extend([path, path.with_name(path.name + ".fifo")])
        return maker(path)

    yield make
    for path in made:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.is_symlink() or path.exists():
            path.unlink()


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """`call()`, failing the test (instead of hanging it) when it does not return in time."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still blocked after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def pgvigil(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """Run the real command; (exit code, stdout + stderr); a traceback or a hang fails the test."""
    done = subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


# -- the one reader ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_read_limited_refuses_what_is_not_a_regular_file(tmp_path, hostile, kind):
    path = tmp_path / "f"
    reason = hostile(path, kind)
    with pytest.raises(UnreadableFile) as raised:
        within(DEADLINE, lambda: read_limited(path, 1024, "config file"))
    assert str(raised.value) == f"{path}: cannot read config file: {reason}"
    assert raised.value.missing is (kind == "dangling symlink")


def test_the_caps_are_the_documented_ones():
    assert CAPS == {4 << 20: "4 MiB", 64 << 10: "64 KiB", 1 << 20: "1 MiB", 16 << 20: "16 MiB", 64 << 20: "64 MiB"}
    assert CHECKSUM_LIMIT == SECRET_LIMIT == 64 << 10
    security = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    for cap in CAPS.values():
        assert f"| {cap} |" in security


def test_read_limited_refuses_a_file_over_its_cap_and_reads_one_at_it(tmp_path, hostile):
    path = tmp_path / "f"
    reason = hostile(path, oversized(64 * 1024))
    with pytest.raises(UnreadableFile) as raised:
        read_limited(path, 64 * 1024, "DSN file")
    assert str(raised.value) == f"{path}: cannot read DSN file: 65,537 bytes, over the 64 KiB limit"
    assert reason == "65,537 bytes, over the 64 KiB limit"
    path.write_bytes(b"x" * 1024)
    assert read_limited(path, 1024, "DSN file") == b"x" * 1024


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    (tmp_path / "real").write_bytes(b"listen: 127.0.0.1:9187\n")
    (tmp_path / "link").symlink_to("real")
    assert read_limited(tmp_path / "link", 100, "config file") == b"listen: 127.0.0.1:9187\n"


def test_a_nul_in_the_path_is_one_error():
    with pytest.raises(UnreadableFile) as raised:
        read_limited("a\0b", 100, "config file")
    assert str(raised.value) == "'a\\x00b': cannot read config file: the path contains a NUL byte"


@pytest.mark.parametrize("text, reason", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"),
    ('{"a": ' * 33 + "1" + "}" * 33, "nested deeper than 32 levels"),
    ('{"finished": Infinity}', "Infinity is not a finite number"),
    ('{"finished": -Infinity}', "-Infinity is not a finite number"),
    ('{"finished": NaN}', "NaN is not a finite number"),
    ('{"finished": 1e999}', "1e999 is not a finite number"),
    ('{"pid": 99999999999999999999}', "the integer 99999999999999999999 does not fit in 64 bits"),
    ('{"pid": ' + "9" * 5000 + "}", "the integer 9999999999999999999999... does not fit in 64 bits"),
], ids=["deep-array", "deep-object", "infinity", "minus-infinity", "nan", "overflowing-float", "20-digit-int",
        "5000-digit-int"])
def test_loads_json_refuses_what_no_reader_can_use(text, reason):
    with pytest.raises(ValueError) as raised:
        loads_json(text)
    assert str(raised.value) == reason


def test_loads_json_accepts_its_limits():
    assert loads_json('{"a": ' * 31 + "[1]" + "}" * 31) is not None
    assert loads_json('{"text": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"]]"}')["text"].startswith("[[[")
    assert loads_json("[9223372036854775807, -9223372036854775808, 1.5e300, 1e-400]") == [
        2**63 - 1, -2**63, 1.5e300, 0.0]


# -- the config, its dsn_file, the web config, its TLS files -----------------------------------------

HOSTILE = [*KINDS, "oversized"]
# click refuses a directory given to --config, --web-config, --thresholds and --objectives itself (exit 2)
HOSTILE_OPTION = [kind for kind in HOSTILE if kind != "directory"]


def _make(hostile, path: Path, kind: str, limit: int) -> str:
    return hostile(path, oversized(limit) if kind == "oversized" else kind)


@pytest.mark.parametrize("kind", HOSTILE_OPTION)
def test_check_with_a_hostile_config_file(tmp_path, hostile, kind):
    path = tmp_path / "pgvigil.yaml"
    reason = _make(hostile, path, kind, CONFIG_LIMIT)
    assert pgvigil("check", "--config", str(path)) == (
        1, f"invalid configuration (1 error):\n  {path}: cannot read config file: {reason}\n")


@pytest.mark.parametrize("kind", HOSTILE)
def test_check_with_a_hostile_dsn_file(tmp_path, hostile, kind):
    secret = tmp_path / "dsn"
    reason = _make(hostile, secret, kind, SECRET_LIMIT)
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"collectors: []\ntargets:\n  a:\n    dsn_file: {secret}\n")
    assert pgvigil("check", "--config", str(config)) == (
        1, f"invalid configuration (1 error):\n  {config}:4: targets.a.dsn_file: cannot read DSN file {secret}: "
           f"{reason}\n")


@pytest.mark.parametrize("content, reason", [
    (b"host=db\0 user=x", "it holds a NUL byte"),
    (b"host=caf\xe9", "not UTF-8 text (byte 8)"),
], ids=["nul", "not-utf8"])
def test_a_dsn_file_that_is_not_one_line_of_text(tmp_path, content, reason):
    secret = tmp_path / "dsn"
    secret.write_bytes(content)
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"collectors: []\ntargets:\n  a:\n    dsn_file: {secret}\n")
    assert pgvigil("check", "--config", str(config)) == (
        1, f"invalid configuration (1 error):\n  {config}:4: targets.a.dsn_file: cannot read DSN file {secret}: "
           f"{reason}\n")


def test_a_dsn_file_behind_a_symlink_is_read(tmp_path):
    (tmp_path / "dsn.real").write_text("host=127.0.0.1 port=1 dbname=x\n")
    (tmp_path / "dsn").symlink_to("dsn.real")
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"collectors: []\ntargets:\n  a:\n    dsn_file: {tmp_path / 'dsn'}\n")
    assert pgvigil("check", "--config", str(config)) == (0, "config OK: 1 target, 0 queries (packs: none)\n")


@pytest.mark.parametrize("kind", HOSTILE_OPTION)
def test_serve_with_a_hostile_web_config(tmp_path, hostile, kind):
    path = tmp_path / "web.yml"
    reason = _make(hostile, path, kind, CONFIG_LIMIT)
    assert pgvigil("serve", "--web-config", str(path), "--listen", f"127.0.0.1:{free_port()}") == (
        1, f"invalid web config (1 error):\n  {path}: cannot read web config file: {reason}\n")


@pytest.mark.parametrize("kind", HOSTILE)
def test_serve_with_hostile_tls_files(tmp_path, hostile, kind):
    reasons = {name: _make(hostile, tmp_path / name, kind, PEM_LIMIT) for name in ("server.crt", "server.key")}
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    assert pgvigil("serve", "--web-config", str(web), "--listen", f"127.0.0.1:{free_port()}") == (
        1, f"invalid web config (2 errors):\n"
           f"  {web}:2: tls_server_config.cert_file: cannot read server.crt: {reasons['server.crt']}\n"
           f"  {web}:3: tls_server_config.key_file: cannot read server.key: {reasons['server.key']}\n")


# -- the bundle's inputs -----------------------------------------------------------------------------

@pytest.mark.parametrize("option, what", [("--thresholds", "thresholds file"), ("--objectives", "objectives file")])
@pytest.mark.parametrize("kind", HOSTILE_OPTION)
def test_bundle_with_a_hostile_input(tmp_path, hostile, option, what, kind):
    path = tmp_path / "input.yaml"
    reason = _make(hostile, path, kind, CONFIG_LIMIT)
    out = tmp_path / "out"
    assert pgvigil("bundle", "--out", str(out), option, str(path)) == (
        1, f"error: {path}: cannot read {what}: {reason}\n")
    assert not out.exists()


# -- `listen`: no control characters -----------------------------------------------------------------

LISTEN = "expected host:port such as 127.0.0.1:9187 (a port from 0 to 65535)"


@pytest.mark.parametrize("listen", ["127.0.0.1\0:9187", "\0:9187", "127.0.0.1:9187\0", "local\thost:9187",
                                    "localhost\n:9187", "local\x1bhost:9187", "local\x7fhost:9187"],
                         ids=["nul-in-host", "nul-host", "nul-after-port", "tab", "newline", "escape", "delete"])
def test_a_listen_with_a_control_character_is_a_located_error(tmp_path, listen):
    path = tmp_path / "pgvigil.yaml"
    path.write_text(f"collectors: []\nlisten: {json.dumps(listen)}\n", encoding="utf-8")
    control = next(c for c in listen if not c.isprintable())
    error = f"{path}:2: listen: {LISTEN}, got the string {listen!r} (it holds the control character {control!r})"
    assert pgvigil("check", "--config", str(path)) == (1, f"invalid configuration (1 error):\n  {error}\n")
    assert pgvigil("serve", "--config", str(path)) == (1, f"invalid configuration (1 error):\n  {error}\n")
    if "\0" not in listen:  # a command line cannot hold a NUL
        assert pgvigil("serve", "--listen", listen) == (
            2, f"invalid --listen (or PGVIGIL_LISTEN): {LISTEN}, got the string {listen!r} "
               f"(it holds the control character {control!r})\n")


# -- the backup state, read by the backup commands and by every scrape -------------------------------

def _state(**record: Any) -> dict:
    now = time.time()
    target = {"failures_total": 1,
              "last_run": {"started": now - 70, "finished": now - 60, "success": True},
              "last_success": {"finished": now - 60, "size_bytes": 1000, "duration_seconds": 10.0}}
    target.update(record)
    return {"format": 1, "targets": {"db": target}, "backups": []}


def _entry(**fields: Any) -> dict:
    entry = {"name": "b1", "target": "db", "status": "running", "started": time.time() - 5,
             "pid": 123, "host": socket.gethostname()}
    entry.update(fields)
    return {"format": 1, "targets": {}, "backups": [entry]}


def _json(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


STATE = "the backup state {path}"
HOSTILE_STATES: dict[str, tuple[Callable[[Path], Any], str]] = {
    "fifo": (_fifo, "{path}: cannot read backup state file: not a regular file (a named pipe)"),
    "symlink to /dev/zero": (_dev_zero, "{path}: cannot read backup state file: not a regular file "
                                        "(a character device)"),
    "symlink to a fifo": (_fifo_behind_symlink, "{path}: cannot read backup state file: not a regular file "
                                                "(a named pipe)"),
    "directory": (_directory, "{path}: cannot read backup state file: not a regular file (a directory)"),
    "oversized": (oversized(STATE_LIMIT), "{path}: cannot read backup state file: 16,777,217 bytes, "
                                          "over the 16 MiB limit"),
    "nested 100,000 deep": (_json("[" * 100_000 + "]" * 100_000),
                            STATE + " is not valid JSON (nested deeper than 32 levels); " + DAMAGE),
    "nested 100,000 deep inside": (_json('{"format": 1, "targets": {}, "backups": ['
                                         + "{\"a\": " * 100_000 + "1" + "}" * 100_000 + "]}"),
                                   STATE + " is not valid JSON (nested deeper than 32 levels); " + DAMAGE),
    "finished Infinity": (_json(json.dumps(_state()).replace('"finished": ', '"finished": Infinity, "x": ', 1)),
                          STATE + " is not valid JSON (Infinity is not a finite number); " + DAMAGE),
    "finished NaN": (_json(json.dumps(_state(last_success={"finished": math.nan}))),
                     STATE + " is not valid JSON (NaN is not a finite number); " + DAMAGE),
    "finished 1e999": (_json(json.dumps(_state()).replace('"size_bytes": 1000', '"size_bytes": 1e999')),
                       STATE + " is not valid JSON (1e999 is not a finite number); " + DAMAGE),
    "finished in 33658": (_json(json.dumps(_state(last_success={"finished": 10**12}))),
                          STATE + " is damaged: targets.db.last_success.finished: expected a Unix time "
                                  "(seconds, not in the future) or null, got 1000000000000; " + DAMAGE),
    "finished before 1970": (_json(json.dumps(_state(last_run={"finished": -1.5}))),
                             STATE + " is damaged: targets.db.last_run.finished: expected a Unix time "
                                     "(seconds, not in the future) or null, got -1.5; " + DAMAGE),
    "pid past 64 bits": (_json(json.dumps(_entry(pid=10**20))),
                         STATE + " is not valid JSON (the integer 100000000000000000000 does not fit in 64 bits); "
                         + DAMAGE),
    "pid past the OS range": (_json(json.dumps(_entry(pid=2**40))),
                              STATE + " is damaged: backups[0].pid: expected a process id, got 1099511627776; "
                              + DAMAGE),
    "negative size": (_json(json.dumps(_state(previous_size_bytes=-1))),
                      STATE + " is damaged: targets.db.previous_size_bytes: expected a size in bytes (0 or more) "
                              "or null, got -1; " + DAMAGE),
    "count past 2^53": (_json(json.dumps(_state(failures_total=2**60))),
                        STATE + " is damaged: targets.db.failures_total: expected a count, got 1152921504606846976; "
                        + DAMAGE),
    "verified at Infinity": (_json(json.dumps(_entry(status="complete", verify={"at": 1e300, "success": True}))),
                             STATE + " is damaged: backups[0].verify.at: expected a Unix time (seconds, not in the "
                                     "future) or null, got 1e+300; " + DAMAGE),
}


@pytest.fixture
def state_dir(tmp_path):
    """A backup directory whose state file the test damages; emptied afterwards (FIFOs and links included)."""
    directory = tmp_path / "backups"
    directory.mkdir()
    yield directory
    for path in directory.iterdir():
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


@pytest.mark.parametrize("damage", HOSTILE_STATES)
def test_backup_status_names_the_hostile_state_file(state_dir, damage):
    make, message = HOSTILE_STATES[damage]
    path = state_dir / STATE_NAME
    make(path)
    assert pgvigil("backup", "status", "--dir", str(state_dir), "--target", "db") == (
        1, f"Error: {message.format(path=path)}\n")


def test_a_fifo_as_the_lock_file_is_refused_not_waited_on(state_dir):
    os.mkfifo(state_dir / ".pgvigil-backup-state.lock")

    def update() -> None:
        with StateFile(state_dir).update():
            pass

    with pytest.raises(BackupError) as raised:
        within(DEADLINE, update)
    assert str(raised.value) == f"{state_dir / '.pgvigil-backup-state.lock'}: cannot use the lock file: " \
                                "not a regular file"


class Served:
    """`pgvigil serve` with a backup section, its log in a file; `scrape()` reads /metrics."""

    def __init__(self, directory: Path, port: int, log: Path, proc: subprocess.Popen) -> None:
        self.directory, self.url, self.log, self.proc = directory, f"http://127.0.0.1:{port}/metrics", log, proc

    def scrape(self) -> tuple[dict, str]:
        started = time.monotonic()
        with urllib.request.urlopen(self.url, timeout=DEADLINE) as response:
            assert response.status == 200
            body = response.read().decode()
        assert time.monotonic() - started < DEADLINE
        return parse_exposition(body), body

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    directory = base / "backups"
    directory.mkdir()
    config = base / "pgvigil.yaml"
    config.write_text(f"collectors: []\ntargets:\n  db:\n    dsn: host=127.0.0.1 port={free_port()} dbname=x\n"
                      f"backup:\n  dir: {directory}\n  target: db\n")
    port = free_port()
    log = base / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(config),
                                 "--listen", f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    server = Served(directory, port, log, proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.scrape()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, server.log_text()
                time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        for path in directory.iterdir():
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    assert proc.returncode == 0
    assert "Traceback" not in server.log_text()


BACKUP_SAMPLES = ("pgvigil_backup_configured", "pgvigil_backup_state_errors_total")


@pytest.mark.parametrize("damage", HOSTILE_STATES)
def test_scrape_with_a_hostile_state_file(served, damage):
    path = served.directory / STATE_NAME
    # a readable state first: its metrics are there, and the next failure is logged again
    path.write_text(json.dumps(_state()))
    samples, _ = served.scrape()
    assert samples[("pgvigil_backup_last_success_timestamp_seconds", frozenset({("target", "db")}))] > 0
    errors_before = samples[("pgvigil_backup_state_errors_total", frozenset({("target", "db")}))]
    path.unlink()
    logged_before = len(served.log_text())

    make, message = HOSTILE_STATES[damage]
    make(path)
    try:
        samples, body = served.scrape()
    finally:
        for made in (path, path.with_name(path.name + ".fifo")):
            if made.is_dir() and not made.is_symlink():
                made.rmdir()
            elif made.is_symlink() or made.exists():
                made.unlink()

    backup = {name: value for (name, labels), value in samples.items() if name.startswith("pgvigil_backup_")}
    assert backup == {"pgvigil_backup_configured": 1.0, "pgvigil_backup_state_errors_total": errors_before + 1}
    assert samples[("pg_up", frozenset({("target", "db")}))] == 0.0  # the rest of the scrape is there
    assert "Inf" not in "".join(line for line in body.splitlines() if line.startswith("pgvigil_backup_"))
    logged = served.log_text()[logged_before:]
    assert f"backup metrics unavailable for target db: {message.format(path=path)}\n" in logged, logged
    assert logged.count("backup metrics unavailable") == 1 and "Traceback" not in logged


# -- a backup's own files, read by `pgvigil backup verify` --------------------------------------------

def _complete_backup(directory: Path) -> dict[str, Path]:
    """A backup the state lists as complete, with its three files; the archive itself is not a real dump
    (every hostile file below fails verification before pg_restore reads it)."""
    files = {"dump": directory / "b1.dump", "checksum": directory / "b1.dump.sha256",
             "manifest": directory / "b1.manifest.json"}
    files["dump"].write_bytes(b"PGDMP not really")
    sha = hashlib.sha256(b"PGDMP not really").hexdigest()
    files["checksum"].write_text(f"{sha}  b1.dump\n")
    files["manifest"].write_text(json.dumps({"sha256": sha, "tables": [], "server_version_num": 180000}))
    now = time.time()
    entry = {"name": "b1", "target": "db", "status": "complete", "started": now - 10, "finished": now - 5,
             "files": {key: path.name for key, path in files.items()}, "size_bytes": 16, "sha256": sha}
    (directory / STATE_NAME).write_text(json.dumps({"format": 1, "targets": {}, "backups": [entry]}))
    return files


HOSTILE_BACKUP_FILES: dict[str, tuple[str, Callable[[Path], Any], str]] = {
    "dump fifo": ("dump", _fifo, "{path}: cannot read backup file: not a regular file (a named pipe)"),
    "dump /dev/zero": ("dump", _dev_zero, "{path}: cannot read backup file: not a regular file (a character device)"),
    "checksum fifo": ("checksum", _fifo, "{path}: cannot read checksum file: not a regular file (a named pipe)"),
    "checksum /dev/zero": ("checksum", _dev_zero,
                           "{path}: cannot read checksum file: not a regular file (a character device)"),
    "manifest fifo": ("manifest", _fifo, "{path}: cannot read manifest: not a regular file (a named pipe)"),
    "manifest /dev/zero": ("manifest", _dev_zero, "{path}: cannot read manifest: not a regular file "
                                                  "(a character device)"),
    "manifest oversized": ("manifest", oversized(MANIFEST_LIMIT),
                           "{path}: cannot read manifest: 67,108,865 bytes, over the 64 MiB limit"),
    "manifest nested 100,000 deep": ("manifest", _json("[" * 100_000 + "]" * 100_000),
                                     "manifest b1.manifest.json is not valid JSON: nested deeper than 32 levels"),
    "manifest Infinity": ("manifest", _json('{"tables": [], "size_bytes": Infinity}'),
                          "manifest b1.manifest.json is not valid JSON: Infinity is not a finite number"),
    "manifest a list": ("manifest", _json("[]"), "manifest b1.manifest.json is not a JSON object"),
    "manifest rows as text": ("manifest", _json('{"tables": [{"schema": "s", "name": "t", "rows": "7"}]}'),
                              "manifest b1.manifest.json has no list of tables with schema, name and a row count"),
}


@pytest.mark.parametrize("damage", HOSTILE_BACKUP_FILES)
def test_verify_with_a_hostile_backup_file(state_dir, damage):
    key, make, message = HOSTILE_BACKUP_FILES[damage]
    path = _complete_backup(state_dir)[key]
    path.unlink()
    make(path)
    code, output = pgvigil("backup", "verify", "--dir", str(state_dir), "--target", "db")
    assert (code, output) == (1, f"backup b1:\n  FAILED  {message.format(path=path)}\n"
                                 "  ...     checking the files of b1 (sha256)\n")
    assert StateFile(state_dir).read()["targets"]["db"]["last_verify"]["success"] is False
