"""A server that ignores pgvigil's bounds cannot make it hold more than wire.ANSWER_BYTES per answer.

Each case runs the session in a child process of its own, so its peak memory (VmHWM) is the case's:
before the bound, 5,000,000 rows past a LIMIT took 753 MB, one 300 MB label 1.5 GB, a 50 MB error 385 MB."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fake_postgres import TEXT, Answer, FakePostgres, huge_error, huge_value_row, repeated

_CHILD = """
import json, sys
from exporter.config import parse_config
from exporter.scrape.session import QueryFailed, TargetSession, prepare_sql
config = parse_config(sys.argv[1])
session = TargetSession(config.targets[0], config.defaults)
session.ensure_connected()
try:
    result = session.run(prepare_sql(config.queries[0], None), timeout=60, lock_timeout=5)
    outcome = {"rows": len(result.rows)}
except QueryFailed as exc:
    outcome = {"failed": str(exc)[:300], "lost": exc.connection_lost}
status = open("/proc/self/status").read()
outcome["peak_mb"] = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) // 1024
print(json.dumps(outcome))
"""

_COLUMNS = [("name", TEXT), ("v", TEXT), ("pgvigil_row_bytes", TEXT)]


def _run(answer: Answer) -> dict:
    with FakePostgres(lambda sql: answer) as server:
        config = (f"collectors: []\ntargets:\n  fake: {{dsn: '{server.dsn()}'}}\nqueries:\n"
                  "  - {name: q, sql: 'SELECT name, v FROM t', labels: [name], metrics: {v: {}}}\n")
        done = subprocess.run([sys.executable, "-c", _CHILD, config], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_an_honest_answer_is_read():
    outcome = _run(Answer(_COLUMNS, [[("a", "1", "1"), ("b", "2", "1")]]))
    assert outcome["rows"] == 2


@pytest.mark.parametrize("case, answer", [
    ("5,000,000 rows past the LIMIT", Answer(_COLUMNS, repeated(("name", "1", "4"), 5_000_000))),
    ("one label of 300 MB", Answer(_COLUMNS[:1], raw=huge_value_row(300 << 20))),
    ("an error message of 50 MB", Answer(_COLUMNS, raw=huge_error(50 << 20))),
])
def test_an_answer_past_the_bound_fails_its_query_and_frees_its_memory(case, answer):
    outcome = _run(answer)
    assert "the server's answer passed 32 MB" in outcome["failed"], case
    assert outcome["lost"] is True
    assert outcome["peak_mb"] < 200, f"{case}: peak {outcome['peak_mb']} MB"
