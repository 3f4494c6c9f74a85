#!/usr/bin/env python3
"""Concurrent scrapes: single flight, no failed request, flat memory.

Starts a real `pgvigil serve` process against a throwaway cluster with a marker query
(`SELECT /* pgvigil_bench_marker */ ...`) and the default packs, then:

  burst   200 scrapes fired at once while a run is in flight (the marker query takes 0.5 s):
          the database must see the marker query once (pg_stat_statements calls).
  soak    10,000 scrapes from 200 concurrent clients with the marker's ttl set to 2 s:
          the database must see at most one run per ttl window (calls <= windows elapsed + 1),
          every request must answer 200, and the exporter's RSS is reported at start and end.

Run from the repository root:  python3 bench/concurrency.py [--clients 200] [--scrapes 10000] [--ttl 2]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.dev.throwaway import ThrowawayCluster, free_port  # noqa: E402

MARKER = "pgvigil_bench_marker"


def write_config(path: Path, dsn: str, ttl: float, sleep: float) -> None:
    path.write_text(f"""\
collectors: [default]
defaults: {{scrape_timeout: 60s}}
targets:
  db: {{dsn: "{dsn}"}}
queries:
  - name: bench_marker
    sql: "SELECT /* {MARKER} */ 1 AS runs FROM pg_sleep({sleep})"
    allow_calls: [pg_sleep]
    ttl: {ttl}s
    metrics: {{runs: {{type: gauge}}}}
""")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def marker_calls(pg: ThrowawayCluster) -> int:
    rows = pg.execute(f"SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE query LIKE '%{MARKER}%' "
                      "AND query NOT LIKE '%pg_stat_statements%'")
    return rows[0][0]


def scrape(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=120) as response:
            body = response.read()
            return response.status if b"bench_marker_runs{" in body else -1
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class Exporter:
    """A `pgvigil serve` subprocess."""

    def __init__(self, config: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(config),
                                      "--listen", f"127.0.0.1:{self.port}", "--log-level", "warning"], cwd=ROOT)
        for _ in range(300):
            if scrape(self.url) == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("pgvigil did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def burst(pg: ThrowawayCluster, workdir: Path, clients: int) -> None:
    config = workdir / "burst.yaml"
    write_config(config, pg.dsn(), ttl=0, sleep=0.5)
    exporter = Exporter(config)
    try:
        time.sleep(0.6)
        pg.execute("SELECT pg_stat_statements_reset()")
        barrier = threading.Barrier(clients)

        def one(_: int) -> int:
            barrier.wait()
            return scrape(exporter.url)

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(one, range(clients)))
        calls = marker_calls(pg)
    finally:
        exporter.stop()
    ok = statuses.count(200)
    print(f"burst: {clients} simultaneous scrapes, ttl 0, marker query 0.5 s: {ok}/{clients} answered 200; "
          f"marker query ran {calls} time(s) (single flight: expected 1)")


def soak(pg: ThrowawayCluster, workdir: Path, clients: int, scrapes: int, ttl: float) -> None:
    config = workdir / "soak.yaml"
    write_config(config, pg.dsn(), ttl=ttl, sleep=0)
    exporter = Exporter(config)
    try:
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:  # warm-up: 200 scrapes
            list(pool.map(lambda _: scrape(exporter.url), range(clients)))
        rss_start = rss_kib(exporter.proc.pid)
        pg.execute("SELECT pg_stat_statements_reset()")
        start = time.monotonic()
        statuses: dict[int, int] = {}
        remaining = iter(range(scrapes))
        checkpoint = max(1, scrapes // 5)
        samples: list[tuple[int, int]] = []
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                status = scrape(exporter.url)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    done = sum(statuses.values())
                    if done % checkpoint == 0:
                        samples.append((done, rss_kib(exporter.proc.pid)))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
        calls = marker_calls(pg)
        rss_end = rss_kib(exporter.proc.pid)
    finally:
        exporter.stop()
    windows = math.ceil(elapsed / ttl)
    failed = scrapes - statuses.get(200, 0)
    print(f"soak: {scrapes} scrapes from {clients} concurrent clients in {elapsed:.1f} s "
          f"({scrapes / elapsed:.0f} scrapes/s), marker ttl {ttl:g} s")
    print(f"  failed requests: {failed} (statuses {dict(sorted(statuses.items()))})")
    print(f"  marker query runs: {calls} over {windows} ttl windows (at most one per window: "
          f"{'yes' if calls <= windows + 1 else 'NO'})")
    print(f"  exporter RSS: {rss_start / 1024:.1f} MiB at start, {rss_end / 1024:.1f} MiB at end "
          f"({(rss_end - rss_start) / 1024:+.1f} MiB)")
    print("  RSS along the way: " + ", ".join(f"{done}: {kib / 1024:.1f} MiB" for done, kib in samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=10000)
    parser.add_argument("--ttl", type=float, default=2.0)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores; one target with the default packs plus the marker query")
    with ThrowawayCluster(settings={"max_connections": "100"}) as pg, tempfile.TemporaryDirectory() as tmp:
        pg.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        burst(pg, Path(tmp), args.clients)
        soak(pg, Path(tmp), args.clients, args.scrapes, args.ttl)


if __name__ == "__main__":
    main()
