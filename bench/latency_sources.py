#!/usr/bin/env python3
"""The latency objective's two server-side sources on one workload (docs/slos.md): how many executions each
calls slower than 200 ms.

A throwaway cluster (csvlog, log_min_duration_statement = 100ms, pg_stat_statements) runs three statements:
a checkout that takes 2 ms but 300 ms one time in ten, a 1 ms lookup and a 250 ms report. pgvigil's log
reader counts the slow executions; pg_stat_statements gives each statement's calls and mean time.
  statements source: the calls of statements whose mean is above the bound
  log source:        the executions the log saw above the bound
both over all calls. Run from the repository root:  python3 bench/latency_sources.py
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.config import parse_config  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster  # noqa: E402
from exporter.serverlog.collector import followers_of  # noqa: E402

BOUND = 0.2
WORKLOAD = (  # statement, executions, duration chooser
    ("SELECT pg_sleep(%s)", 400, lambda rng: 0.3 if rng.random() < 0.1 else 0.002),  # checkout
    ("SELECT 1 FROM pg_sleep(%s)", 400, lambda rng: 0.001),  # lookup
    ("SELECT 1, 2 FROM pg_sleep(%s)", 20, lambda rng: 0.25),  # report
)


def main() -> None:
    settings = {"logging_collector": "on", "log_destination": "'csvlog'", "log_directory": "'log'",
                "lc_messages": "'C'", "log_min_duration_statement": "'100ms'"}
    with ThrowawayCluster(settings=settings) as pg:
        pg.execute("CREATE EXTENSION pg_stat_statements")
        config = parse_config(f"collectors: []\ntargets:\n  db:\n    dsn: {pg.dsn()}\n"
                              f"    log: {{source: file, path: {pg.datadir / 'log'}, interval: 1s}}\n")
        follower = followers_of(config)[0]
        follower.start()
        try:
            deadline = time.monotonic() + 30
            while follower.counters.readable is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            pg.execute("SELECT pg_stat_statements_reset()")
            rng = random.Random(1)
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                for sql, count, duration in WORKLOAD:
                    for _ in range(count):
                        conn.execute(sql, (duration(rng),))
            time.sleep(2.5)
            rows = pg.execute("SELECT query, calls, mean_exec_time / 1000 FROM pg_stat_statements "
                              "WHERE query LIKE '%pg_sleep%' AND query NOT LIKE '%pg_stat_statements%'")
            histogram = follower.counters.durations
            over = sum(histogram.counts[histogram.bounds.index(BOUND) + 1:])
        finally:
            follower.stop()
    calls = sum(row[1] for row in rows)
    by_mean = sum(row[1] for row in rows if row[2] > BOUND)
    for query, count, mean in rows:
        print(f"  {query:32} {count:5} calls, mean {mean * 1000:7.1f} ms")
    print(f"statements source: {by_mean} of {calls} executions slow ({by_mean / calls:.1%})")
    print(f"log source:        {over} of {calls} executions slow ({over / calls:.1%})")


if __name__ == "__main__":
    main()
