#!/usr/bin/env python3
"""Whole-cluster discovery: pgvigil `databases: all` against postgres_exporter --auto-discover-databases.

Builds D databases of T tables each (default 100 x 200) in a throwaway cluster (one template
database, copied), then scrapes each exporter S times in turn and prints the wall time per scrape
and the most connections each one held at once: pg_stat_activity sampled every 5 ms during the
scrapes for postgres_exporter, pgvigil's own count of open connections for pgvigil (a sample of
pg_stat_activity can also catch a backend still exiting after pgvigil closed its connection).
pgvigil runs with the default connection budget (5), over HTTP as postgres_exporter is, four ways:
its default packs, and only the packs that export postgres_exporter's default series; each with every
ttl forced to 0 (every query on every scrape, back to back) and as shipped, scraped every --interval
seconds as Prometheus would (a discovered database's results past their ttl are served while they
refresh in the background). postgres_exporter is Debian's prometheus-postgres-exporter 0.11.1 with its
default collectors and --auto-discover-databases.

Run from the repository root:  python3 bench/discovery.py [--databases 100] [--tables 200] [--scrapes 5]
                                [--interval 15] [--shipped-scrapes 8]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scrape_5000 import add_as_shipped_arguments, ensure_postgres_exporter, start_process, wait_for_http, without_ttls  # noqa: E402

from exporter.config import parse_config  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster, free_port  # noqa: E402
from exporter.server import start_server  # noqa: E402

ROLES = {"pgvigil": "disc_pgvigil", "postgres_exporter": "disc_postgres_exporter"}
GOAL = 0.3  # pgvigil's scrape time at most this share of postgres_exporter's


def build(cluster: ThrowawayCluster, databases: int, tables: int) -> None:
    cluster.execute("CREATE DATABASE bench_template")
    cluster.execute(f"""DO $$ BEGIN FOR i IN 0..{tables - 1} LOOP
        EXECUTE format('CREATE TABLE t_%s (id int PRIMARY KEY, payload text)', i);
        EXECUTE format('INSERT INTO t_%s SELECT g, md5(g::text) FROM generate_series(1, %s) g', i, i % 50);
    END LOOP; END $$""", "bench_template")
    cluster.execute("VACUUM ANALYZE", "bench_template")
    for i in range(databases):
        cluster.execute(f"CREATE DATABASE db_{i:03} TEMPLATE bench_template")
    cluster.execute("ALTER DATABASE bench_template IS_TEMPLATE true")  # skipped by both, as templates are
    for role in ROLES.values():
        cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}")


class ConnectionWatch:
    """The most connections matching `where` open at once while running."""

    def __init__(self, dsn: str, where: str) -> None:
        self.dsn, self.where, self.peak = dsn, where, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ConnectionWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = psycopg.connect(self.dsn, autocommit=True)
        with conn.cursor() as cur:
            while not self._stop.wait(0.005):
                cur.execute(f"SELECT count(*) FROM pg_stat_activity WHERE {self.where}")
                self.peak = max(self.peak, cur.fetchone()[0])
        conn.close()


def timed(scrape: Callable[[], int], scrapes: int, interval: float = 0.0) -> tuple[list[float], int]:
    scrape()  # warm-up: connections, discovery, capability probes
    times, series = [], 0
    for _ in range(scrapes):
        time.sleep(interval)
        start = time.perf_counter()
        series = scrape()
        times.append(time.perf_counter() - start)
    return times, series


# The packs that export what postgres_exporter's default collectors do (docs/postgres_exporter.md).
DROPIN_COLLECTORS = ("settings", "version", "database", "conflicts", "connections", "locks", "archiver", "bgwriter",
                     "replication", "slot_positions", "logical_replication", "roles", "wal_files", "renamed")


def run_pgvigil(cluster: ThrowawayCluster, scrapes: int, interval: float = 0.0,
                collectors: tuple[str, ...] = ("default",)) -> tuple[list[float], int, int]:
    """interval 0: every query on every scrape (ttls forced to 0), scraped back to back; else the packs
    as shipped, scraped every `interval` seconds as Prometheus would. Over HTTP, as postgres_exporter
    is: the time includes sending the answer."""
    config = parse_config(f"targets:\n  bench:\n    dsn: {cluster.dsn('postgres', ROLES['pgvigil'])}\n"
                          "    databases: all\ndefaults: {scrape_timeout: 120s}\n"
                          f"collectors: [{', '.join(collectors)}]\n")
    if not interval:
        config = without_ttls(config)
    server = start_server(config)
    url = f"{server.url}/metrics"
    try:
        with ConnectionWatch(cluster.dsn(), f"usename = '{ROLES['pgvigil']}'") as watch:
            times, series = timed(lambda: urllib.request.urlopen(url, timeout=300).read().count(b"\n"),
                                  scrapes, interval)
        peak = server.exporter.runner.roots["bench"].budget.peak
        print(f"  pgvigil held at most {peak} connections at once (its own count; "
              f"pg_stat_activity showed up to {watch.peak}, counting backends still exiting after a close)")
        return times, series, peak
    finally:
        server.stop()


def run_postgres_exporter(cluster: ThrowawayCluster, scrapes: int, workdir: Path) -> tuple[list[float], int, int]:
    port = free_port()
    proc = start_process("postgres_exporter", [
        ensure_postgres_exporter(), f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        "--auto-discover-databases", "--exclude-databases=bench_template",
    ], {"PATH": "/usr/bin:/bin", "DATA_SOURCE_NAME": cluster.dsn("postgres", ROLES["postgres_exporter"])
        + "?sslmode=disable"}, workdir)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_http(url, proc, "postgres_exporter", workdir / "postgres_exporter.log")
        with ConnectionWatch(cluster.dsn(), f"usename = '{ROLES['postgres_exporter']}'") as watch:
            times, series = timed(lambda: urllib.request.urlopen(url, timeout=300).read().count(b"\n"), scrapes)
        return times, series, watch.peak
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", type=int, default=100)
    parser.add_argument("--tables", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=5)
    add_as_shipped_arguments(parser, 8, "8 x 15 s: 2 minutes")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pgvigil-discovery-"))
    cluster = ThrowawayCluster(settings={"max_connections": "300", "max_locks_per_transaction": "512"})
    try:
        cluster.start()
        print(f"building {args.databases} databases x {args.tables} tables...", flush=True)
        build(cluster, args.databases, args.tables)
        results = {}
        for packs, collectors in (("default packs", ("default",)), ("postgres_exporter's series", DROPIN_COLLECTORS)):
            results[f"pgvigil, {packs}, every query"] = run_pgvigil(cluster, args.scrapes, collectors=collectors)
            if args.interval:
                print(f"scraping pgvigil ({packs}) as shipped every {args.interval:g} s, {args.shipped_scrapes} times",
                      flush=True)
                results[f"pgvigil, {packs}, as shipped"] = run_pgvigil(
                    cluster, args.shipped_scrapes, args.interval, collectors)
        results[BASELINE] = run_postgres_exporter(cluster, args.scrapes, workdir)
    finally:
        cluster.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    return report(args, results)


BASELINE = "postgres_exporter"


def report(args: argparse.Namespace, results: dict[str, tuple[list[float], int, int]]) -> int:
    median = {name: statistics.median(times) for name, (times, _, _) in results.items()}
    print(f"{args.databases} databases x {args.tables} tables (wall time per scrape: median, min, max)")
    ok = True
    for name, (times, lines, peak) in results.items():
        ratio = median[name] / median[BASELINE]
        verdict = "" if name == BASELINE else (" goal met" if ratio <= GOAL else " goal NOT met")
        ok = ok and (name == BASELINE or ratio <= GOAL and peak <= 5)
        print(f"  {name:48} {median[name] * 1000:7.0f} ms {min(times) * 1000:7.0f} {max(times) * 1000:7.0f}"
              f" {lines:8d} lines, at most {peak:3d} connections, {ratio:5.2f}x{verdict}")
    print(f"  goal: at most {GOAL}x postgres_exporter's scrape time; pgvigil within its connection budget of 5")
    if args.json:
        args.json.write_text(json.dumps({"median_seconds": median,
                                         "lines": {n: r[1] for n, r in results.items()},
                                         "peak_connections": {n: r[2] for n, r in results.items()}}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
