#!/usr/bin/env python3
"""Many targets: one scrape of 50 databases against one scrape of a single database of the same size.

Builds one template database (N tables with rows and an index each, pg_stat_statements), clones it
into 50 databases spread over one or more throwaway clusters, and measures steady-state scrapes
(connections warm, ttl 0 so every scrape runs every query) with the shipped default packs:

  single   one target, the same database size as each of the 50
  all      the 50 targets in one scrape (they run concurrently)
  serial   the 50 targets scraped one after another (what a sequential exporter would take)

The issue's target is all / single <= 2. Concurrency across targets overlaps waiting, not CPU: on a
machine with few cores the server's own work for 50 databases cannot shrink below (50 / cores) times
one database's work, so the script also prints the core count and all / serial.

Run from the repository root:  python3 bench/many_targets.py [--targets 50] [--clusters 1] [--tables 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from exporter.config import available_packs, parse_config  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster  # noqa: E402
from exporter.server import Exporter  # noqa: E402

TEMPLATE = "bench_template"
TARGET_RATIO = 2.0


def build_template(pg: ThrowawayCluster, tables: int, rows: int) -> None:
    pg.execute(f"CREATE DATABASE {TEMPLATE}")
    statements = ["CREATE EXTENSION IF NOT EXISTS pg_stat_statements"]
    for i in range(tables):
        statements.append(f"CREATE TABLE t{i} (id int PRIMARY KEY, v text, at timestamptz DEFAULT now())")
        statements.append(f"INSERT INTO t{i} (id, v) SELECT g, md5(g::text) FROM generate_series(1, {rows}) g")
        statements.append(f"CREATE INDEX t{i}_v ON t{i} (v)")
    pg.execute(";\n".join(statements), TEMPLATE)
    pg.execute("VACUUM ANALYZE", TEMPLATE)


def pack_queries_without_ttl() -> list[dict]:
    """The default packs' queries with their ttl removed, so every scrape runs every query."""
    queries = []
    for path in available_packs().values():
        pack = yaml.safe_load(path.read_text())
        if pack.get("default", True):
            queries += [{k: v for k, v in q.items() if k != "ttl"} for q in pack.get("queries", [])]
    return queries


def config_text(dsns: dict[str, str], every_query: bool) -> str:
    document = {"defaults": {"scrape_timeout": "120s", "timeout": "60s"},
                "targets": {name: {"dsn": dsn} for name, dsn in dsns.items()}}
    if every_query:
        document.update(collectors=[], queries=pack_queries_without_ttl())
    else:
        document["collectors"] = ["default"]
    return yaml.safe_dump(document, sort_keys=False)


def timed_scrapes(dsns: dict[str, str], rounds: int, every_query: bool,
                  warmup: int = 2) -> tuple[list[float], int, float, float]:
    """Seconds per scrape (Exporter.metrics: scrape + render, as /metrics does), the output size,
    pgvigil's own CPU seconds per scrape (this process), and how busy the machine's CPUs were."""
    exporter = Exporter(parse_config(config_text(dsns, every_query), source="bench"))
    try:
        for _ in range(warmup):
            exporter.metrics(120.0)
        times, size = [], 0
        cpu, machine = time.process_time(), machine_ticks()
        for _ in range(rounds):
            start = time.perf_counter()
            text = exporter.metrics(120.0)
            times.append(time.perf_counter() - start)
            size = len(text)
        busy, total = (after - before for after, before in zip(machine_ticks(), machine))
        return times, size, (time.process_time() - cpu) / rounds, busy / max(total, 1)
    finally:
        exporter.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--clusters", type=int, default=1)
    parser.add_argument("--tables", type=int, default=20, help="tables per database")
    parser.add_argument("--rows", type=int, default=200, help="rows per table")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    clusters = [ThrowawayCluster(settings={"max_connections": str(args.targets + 50)}).start()
                for _ in range(args.clusters)]
    try:
        dsns: dict[str, str] = {}
        for pg in clusters:
            build_template(pg, args.tables, args.rows)
        for i in range(args.targets):
            pg = clusters[i % len(clusters)]
            dsns[f"db{i:02d}"] = _clone(pg, f"db{i:02d}")
        print(f"machine: {os.cpu_count()} CPU cores; PostgreSQL clusters: {args.clusters}; {args.targets} databases of "
              f"{args.tables} tables x {args.rows} rows; default packs; {args.rounds} rounds after 2 warm-up scrapes")
        for every_query, title in ((False, "packs as shipped (per-table queries ttl 30s, cluster-wide ones once "
                                           "per server)"), (True, "ttl removed: every scrape runs every query")):
            report(dsns, args, every_query, title)
    finally:
        for pg in clusters:
            pg.cleanup()


def report(dsns: dict[str, str], args: argparse.Namespace, every_query: bool, title: str) -> None:
    first = next(iter(dsns))
    single, single_size, single_cpu, single_busy = timed_scrapes({first: dsns[first]}, args.rounds, every_query)
    together, all_size, all_cpu, all_busy = timed_scrapes(dsns, args.rounds, every_query)
    serial = sum(statistics.median(timed_scrapes({name: dsn}, 3, every_query, warmup=1)[0])
                 for name, dsn in dsns.items())
    med_single, med_all = statistics.median(single), statistics.median(together)
    ratio = med_all / med_single
    print(f"\n{title}")
    print(f"{'scrape':<34}{'median':>10}{'min':>10}{'max':>10}{'bytes':>11}{'pgvigil CPU':>13}{'CPUs busy':>11}")
    print(f"{'single target':<34}{med_single * 1000:>8.1f}ms{min(single) * 1000:>8.1f}ms"
          f"{max(single) * 1000:>8.1f}ms{single_size:>11}{single_cpu * 1000:>11.1f}ms{single_busy:>11.0%}")
    print(f"{f'{args.targets} targets, one scrape':<34}{med_all * 1000:>8.1f}ms{min(together) * 1000:>8.1f}ms"
          f"{max(together) * 1000:>8.1f}ms{all_size:>11}{all_cpu * 1000:>11.1f}ms{all_busy:>11.0%}")
    print(f"{f'{args.targets} targets, one after another':<34}{serial * 1000:>8.1f}ms")
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"ratio all/single: {ratio:.2f} (target <= {TARGET_RATIO:.1f}: {verdict})")
    print(f"concurrency speed-up over one after another: {serial / med_all:.1f}x")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine from /proc/stat: pgvigil, PostgreSQL and all."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _clone(pg: ThrowawayCluster, name: str) -> str:
    pg.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
    return pg.dsn(name)


if __name__ == "__main__":
    main()
