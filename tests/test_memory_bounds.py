"""Memory is bounded for the whole process, not only per query: twelve wide queries at the default
limits kept 189 MB of text and reached 511 MB; now the text kept is at most retained.RETAINED_BYTES
and the process stays under 250 MB (a real `pgvigil serve` on a real PostgreSQL, measured by VmHWM)."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from conftest import parse_exposition

from exporter.dev.throwaway import free_port
from exporter.scrape.retained import RETAINED_BYTES

WIDE = """  - name: wide{i}
    sql: "SELECT i::text AS k, repeat('a', 2000) || i AS a, repeat('b', 2000) || i AS b,
          repeat('c', 2000) || i AS c, i AS v, i AS w, i AS x, i AS y, i AS z FROM generate_series(1, 10000) i"
    labels: [k, a, b, c]
    metrics: {{v: {{}}, w: {{}}, x: {{}}, y: {{}}, z: {{}}}}
"""


def test_twelve_wide_queries_at_default_limits_stay_under_250_mb(cluster, tmp_path):
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"collectors: []\ntargets:\n  db: {{dsn: '{cluster.dsn()}'}}\nqueries:\n"
                      + "".join(WIDE.format(i=i) for i in range(12)))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(config),
                               "--listen", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "pgvigil did not start"
                time.sleep(0.2)
        for _ in range(3):
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120).read()
            assert len(body) < RETAINED_BYTES + (1 << 20)
        status = open(f"/proc/{server.pid}/status").read()
        peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    finally:
        server.terminate()
        server.wait(30)
    assert peak_kb < 250 * 1024, f"peak {peak_kb // 1024} MB"
    samples = parse_exposition(body.decode())
    dropped = sum(value for (name, labels), value in samples.items()
                  if name == "pgvigil_query_errors_total" and ("reason", "cardinality") in labels)
    assert dropped > 0  # what did not fit is counted, never silent
