#!/usr/bin/env python3
"""The sampler's cost: its database time and pgvigil's CPU, per second, with 20 and 500 sessions connected.

Starts a throwaway cluster, connects N sessions that are all active (each in pg_sleep under an
application name of its own: the most rows a sample can group, and more label sets than sample_top),
and runs one sampler (exporter/scrape/sampler.py, the real session layer) at the default interval for
a fixed window. It measures, from /proc:

  database  CPU seconds of the sampler's backend (every statement it sends: reset, pins, the sample)
  pgvigil   CPU seconds of the sampler's thread in this process (driver, grouping, the bounded profile)

and prints each per second of wall time, as a share of one core, against the issue's goal (below 1 %).

Run from the repository root:  python3 bench/sampler.py [--sessions 20 500] [--seconds 60]
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from exporter.config import TARGET_KEYS, Defaults, TargetSpec  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster  # noqa: E402
from exporter.scrape.sampler import Sampler  # noqa: E402
from exporter.scrape.session import TargetSession  # noqa: E402

GOAL = 0.01  # of one core, each side
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path: str) -> float:
    """utime + stime of a process or thread, from its /proc stat line."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def busy_sessions(pg: ThrowawayCluster, count: int) -> tuple[list[psycopg.Connection], list[threading.Thread]]:
    connections = [psycopg.connect(pg.dsn(), autocommit=True, application_name=f"bench-{i}") for i in range(count)]

    def sleep(conn: psycopg.Connection) -> None:
        try:
            conn.execute("SELECT pg_sleep(3600)")
        except psycopg.Error:
            pass  # cancelled at the end
    threads = [threading.Thread(target=sleep, args=(conn,), daemon=True) for conn in connections]
    for thread in threads:
        thread.start()
    return connections, threads


def measure(pg: ThrowawayCluster, sessions: int, seconds: float) -> tuple[float, float, int, int]:
    connections, threads = busy_sessions(pg, sessions)
    defaults = Defaults()
    session = TargetSession(TargetSpec(name="bench", dsn=pg.dsn()), defaults)
    sampler = Sampler("bench", 'target="bench"', session, TARGET_KEYS["sample_interval"].default, 100, defaults)
    try:
        time.sleep(1.0)  # every session in pg_sleep
        sampler.start()
        deadline = time.monotonic() + 10
        while (sampler.stats.samples < 1 or session._conn is None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sampler._thread is not None and session._conn is not None
        backend = f"/proc/{session._conn.info.backend_pid}/stat"
        thread = f"/proc/self/task/{sampler._thread.native_id}/stat"
        start, db_before, own_before, samples_before = time.monotonic(), cpu_seconds(backend), cpu_seconds(thread), \
            sampler.stats.samples
        time.sleep(seconds)
        wall = time.monotonic() - start
        db, own = cpu_seconds(backend) - db_before, cpu_seconds(thread) - own_before
        return db / wall, own / wall, sampler.stats.samples - samples_before, sampler.stats.skipped
    finally:
        sampler.close()
        for conn in connections:
            conn.cancel_safe(timeout=5)
        for t in threads:
            t.join(timeout=10)
        for conn in connections:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[20, 500])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with ThrowawayCluster(settings={"max_connections": str(max(args.sessions) + 20)}) as pg:
        print(f"sampler at the default interval (1 s), {args.seconds:g} s per run, goal below {GOAL:.0%} of one core")
        print(f"{'sessions':>8} {'database':>10} {'pgvigil':>10} {'samples':>8} {'skipped':>8}  (share of one core)")
        for count in args.sessions:
            db, own, samples, skipped = measure(pg, count, args.seconds)
            verdict = "ok" if db < GOAL and own < GOAL else "OVER GOAL"
            print(f"{count:>8} {db:>10.3%} {own:>10.3%} {samples:>8} {skipped:>8}  "
                  f"db/goal {db / GOAL:.2f}, pgvigil/goal {own / GOAL:.2f}  {verdict}")


if __name__ == "__main__":
    main()
