#!/usr/bin/env python3
"""Server log parsing speed per format, and pgvigil's memory while reading a 1 GB log (issue 22).

1. For each format (csvlog, jsonlog, stderr with `%m [%p] %q%u@%d `) a throwaway PostgreSQL cluster logs a
   mixed workload: every statement with its duration (log_min_duration_statement = 0), connections, failed
   logins, errors, a multi-line statement. That real log is repeated to --mb megabytes.
2. The reader parses and classifies it (exporter.serverlog: the same code `pgvigil serve` runs) and the
   CPU time of this process is measured: MB/s and lines/s per core.
3. --rss: a child process reads a 1 GB csvlog file (the same log repeated) in one cycle; its peak RSS
   (VmHWM) after the read minus before is the memory reading added.

Run from the repository root:  python3 bench/logs.py [--mb 128] [--rss] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.dev.throwaway import ThrowawayCluster  # noqa: E402
from exporter.serverlog import csvlog, jsonlog  # noqa: E402
from exporter.serverlog.classify import Classifier  # noqa: E402
from exporter.serverlog.counters import LogCounters  # noqa: E402
from exporter.serverlog.stderr import StderrParser  # noqa: E402

PREFIX = "%m [%p] %q%u@%d "
SUFFIX = {"csvlog": ".csv", "jsonlog": ".json", "stderr": ".log"}


def workload(pg: ThrowawayCluster) -> None:
    pg.execute("CREATE ROLE alice LOGIN PASSWORD 'pw'; CREATE TABLE t (id int PRIMARY KEY, v text)")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for i in range(4000):
            conn.execute("INSERT INTO t VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
                         (i % 500, f"value {i}"))
            conn.execute("SELECT id, v FROM t WHERE id = %s AND v LIKE %s", (i % 500, "value%"))
            if i % 50 == 0:
                try:
                    conn.execute("SELECT 'x'::int")
                except psycopg.Error:
                    pass
                conn.execute("SELECT count(*)\nFROM t\nWHERE v <> ''")
    for _ in range(50):
        try:
            psycopg.connect(pg.dsn(user="alice", password="wrong"), connect_timeout=5).close()
        except psycopg.Error:
            pass


def sample_log(fmt: str) -> bytes:
    settings = {"logging_collector": "on", "log_destination": f"'{fmt}'", "log_directory": "'log'",
                "lc_messages": "'C'", "log_connections": "on", "log_disconnections": "on",
                "log_min_duration_statement": "0", "log_line_prefix": f"'{PREFIX}'"}
    with ThrowawayCluster(settings=settings, preload=()) as pg:
        (pg.datadir / "pg_hba.conf").write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                                                 "host all all 127.0.0.1/32 scram-sha-256\n")
        pg.execute("SELECT pg_reload_conf()")
        workload(pg)
        time.sleep(1)
        files = [p for p in (pg.datadir / "log").iterdir() if p.suffix == SUFFIX[fmt]]
        return b"".join(p.read_bytes() for p in sorted(files))


def parser(fmt: str):
    return {"csvlog": csvlog.parse, "jsonlog": jsonlog.parse, "stderr": StderrParser(PREFIX).parse}[fmt]


def throughput(fmt: str, log: bytes, megabytes: int) -> dict:
    data = log * max(1, (megabytes << 20) // len(log))
    counters = LogCounters()
    classify = Classifier(counters)
    parse = parser(fmt)
    chunk = 1 << 20
    started = time.process_time()
    offset = 0
    while offset < len(data):
        parsed = parse(data[offset:offset + chunk], classify)
        offset += parsed.consumed or len(data)
    seconds = time.process_time() - started
    lines = sum(counters.messages.values.values())
    return {"format": fmt, "bytes": len(data), "lines": lines, "cpu_seconds": round(seconds, 2),
            "mb_per_s": round(len(data) / seconds / 1e6, 1), "lines_per_s": round(lines / seconds),
            "avg_line_bytes": round(len(data) / max(1, lines))}


CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from exporter.serverlog import csvlog
from exporter.serverlog.classify import Classifier
from exporter.serverlog.counters import LogCounters
from exporter.serverlog.reader import LogReader
from exporter.serverlog.source import FileSource
counters = LogCounters()
reader = LogReader(FileSource(Path(sys.argv[1])), "csvlog", csvlog.parse, Classifier(counters), counters, {})
def hwm():  # the peak RSS of this process image (ru_maxrss would keep the forking parent's across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = hwm()
reader.cycle(8 * 1024 ** 3)
after = hwm()
print(json.dumps({"rss_before": before, "rss_after": after, "added_mb": round((after - before) / 2**20, 1),
                  "read_bytes": counters.read_bytes, "lines": counters.entries}))
"""


def rss(log: bytes) -> dict:
    with tempfile.TemporaryDirectory(prefix="pgvigil-bench-logs-") as tmp:
        path = Path(tmp) / "burst.csv"
        with open(path, "wb") as fh:
            for _ in range((1 << 30) // len(log)):
                fh.write(log)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", CHILD, tmp, str(ROOT)], capture_output=True, text=True,
                              timeout=1800, check=True)
        result = json.loads(done.stdout)
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        return result


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--mb", type=int, default=128, help="megabytes parsed per format (default 128)")
    args.add_argument("--formats", default="csvlog,jsonlog,stderr")
    args.add_argument("--rss", action="store_true", help="also read a 1 GB csvlog file in a child process")
    args.add_argument("--json", type=Path, help="write the results here")
    opts = args.parse_args()
    results: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "formats": []}
    logs = {}
    for fmt in opts.formats.split(","):
        logs[fmt] = sample_log(fmt)
        result = throughput(fmt, logs[fmt], opts.mb)
        results["formats"].append(result)
        print(f"{fmt:8} {result['mb_per_s']:6.1f} MB/s  {result['lines_per_s']:>8} lines/s per core "
              f"({result['bytes'] >> 20} MiB, {result['avg_line_bytes']} bytes/line, {result['cpu_seconds']} s CPU)")
    if opts.rss:
        log = logs.get("csvlog") or sample_log("csvlog")
        results["rss_1gb_csvlog"] = found = rss(log)
        print(f"1 GB csvlog in one cycle: RSS {found['rss_before'] >> 20} -> {found['rss_after'] >> 20} MiB "
              f"(+{found['added_mb']} MiB), {found['wall_seconds']} s")
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
