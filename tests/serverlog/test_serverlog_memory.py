"""A 1 GB burst of csvlog read in one go stays bounded in memory: the reader holds a chunk and at most one
entry, never the burst. Measured in a child process (its peak RSS before and after the read)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from logsupport import csv_record

BURST_BYTES = int(os.environ.get("PGVIGIL_TEST_LOG_BURST_BYTES", str(1024 ** 3)))
ADDED_RSS_LIMIT = 50 * 1024 * 1024

CHILD = r"""
import json, sys
from pathlib import Path
from exporter.serverlog import csvlog
from exporter.serverlog.classify import Classifier
from exporter.serverlog.counters import LogCounters
from exporter.serverlog.positions import Position
from exporter.serverlog.reader import LogReader
from exporter.serverlog.source import FileSource

path = Path(sys.argv[1])
counters = LogCounters()
classifier = Classifier(counters)
classifier.roles, classifier.databases = frozenset({"alice"}), frozenset({"app"})
reader = LogReader(FileSource(path.parent), "csvlog", csvlog.parse, classifier, counters,
                   {"unused": Position("none", 0)})
reader.positions = {}  # every file is new: read from its start
def hwm():  # the peak RSS of this process image (ru_maxrss would keep the forking parent's across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = hwm()
reader.cycle(4 * 1024 ** 3)
after = hwm()
print(json.dumps({"before": before, "after": after, "read": counters.read_bytes, "entries": counters.entries,
                  "errors": counters.parse_errors, "failures": sum(counters.auth_failures.values.values()),
                  "backlog": counters.backlog_bytes}))
"""


def burst(path: Path, size: int) -> int:
    """Write about `size` bytes of csvlog (a block of varied records, repeated); returns the records written."""
    block = b"".join([
        csv_record("duration: 250.1 ms  statement: SELECT * FROM t WHERE a = 1\nAND b = 'x'"),
        csv_record('password authentication failed for user "alice"', "FATAL", "28P01", user="alice"),
        csv_record("connection authorized: user=alice database=app"),
        csv_record("caf\u00e9 not utf-8 follows").replace(b"\xc3\xa9", b"\xe9"),
    ] * 256)
    copies = max(1, size // len(block))
    with open(path, "wb") as fh:
        for _ in range(copies):
            fh.write(block)
    return copies * 1024


def test_a_1gb_burst_is_read_in_bounded_memory(tmp_path):
    logs = tmp_path / "log"
    logs.mkdir()
    records = burst(logs / "burst.csv", BURST_BYTES)
    size = (logs / "burst.csv").stat().st_size
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(logs / "burst.csv")], capture_output=True,
                              text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
    finally:
        (logs / "burst.csv").unlink()
    # every byte read once, plus each chunk's cut last entry read again at the start of the next chunk
    assert size <= result["read"] < size * 1.01 and result["backlog"] == 0
    assert result["entries"] == records and result["errors"] == 0 and result["failures"] == records // 4
    assert result["after"] - result["before"] < ADDED_RSS_LIMIT, result
