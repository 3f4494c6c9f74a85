#!/usr/bin/env python3
"""Database time per scrape: pgvigil's default packs against postgres_exporter's defaults.

Builds a catalog of N tables (default 5,000, bench/scrape_5000.py's catalog) in a throwaway
cluster. Each exporter connects as its own role; pg_stat_statements of that role gives the
database time it spent (planning and execution: pg_stat_statements.track_planning is on) and
how many statements it ran. pgvigil is
measured twice: every default query on every scrape (ttls forced to 0, nothing served from
cache), and as shipped, scraped every --interval seconds like Prometheus would, its ttls serving
what is fresh enough from cache. postgres_exporter 0.11 (Debian's prometheus-postgres-exporter)
runs its default collectors on every scrape. The series each one exports per scrape are counted
from its text.

Run from the repository root:  python3 bench/footprint.py [--tables 5000] [--scrapes 10] [--interval 15]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scrape_5000 import (  # noqa: E402
    DATABASE,
    add_as_shipped_arguments,
    build_catalog,
    ensure_postgres_exporter,
    start_process,
    wait_for_http,
    without_ttls,
)

from exporter.config import parse_config  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster, free_port  # noqa: E402
from exporter.scrape.assembly import ScrapeText  # noqa: E402
from exporter.scrape.runner import Runner  # noqa: E402
from exporter.scrape.selfmetrics import render_self_metrics  # noqa: E402

ROLES = {"pgvigil": "footprint_pgvigil", "postgres_exporter": "footprint_postgres_exporter"}
GOALS = {"database_time": 0.5, "series": 5.0}  # at most half the time, at least 5x the series
# What pg_stat_statements counts as an exporter's database time: planning and execution.
SPENT = "s.total_plan_time + s.total_exec_time"


def series_count(text: str) -> int:
    return sum(len(family.samples) for family in text_string_to_metric_families(text))


def database_time(cluster: ThrowawayCluster, role: str) -> tuple[float, int]:
    """(milliseconds planning and executing, statements executed) of `role` since the last reset."""
    rows = cluster.execute(f"SELECT coalesce(sum({SPENT}), 0), coalesce(sum(s.calls), 0)::bigint"
                           f" FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role}'",
                           DATABASE)
    return float(rows[0][0]), int(rows[0][1])


def top_statements(cluster: ThrowawayCluster, role: str, scrapes: int, count: int) -> list[str]:
    """The `count` statements of `role` that took the most database time, per scrape."""
    rows = cluster.execute(
        f"SELECT {SPENT}, s.calls, regexp_replace(s.query, '\\s+', ' ', 'g') FROM pg_stat_statements s"
        f" JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role}' ORDER BY 1 DESC LIMIT {count}", DATABASE)
    return [f"{ms / scrapes:8.1f} ms {calls / scrapes:5.1f}x  {_query_name(text)}" for ms, calls, text in rows]


def _query_name(text: str) -> str:
    """A statement's first words, or the innermost FROM of pgvigil's wrapped query."""
    inner = text.split(") AS pgvigil_query")[0]
    if "FROM ( " in inner:
        inner = inner.split("FROM ( ", 1)[1]
    return inner[:90]


@dataclasses.dataclass
class Measured:
    ms_per_scrape: float
    statements_per_scrape: float
    series: int


def pgvigil_scrapes(cluster: ThrowawayCluster, scrapes: int, interval: float) -> Measured:
    """`scrapes` scrapes `interval` seconds apart; interval 0: every query on every scrape (ttls forced
    to 0), else the packs as shipped, their ttls serving what is fresh enough from cache."""
    config = parse_config(f"targets:\n  bench: {cluster.dsn(DATABASE, ROLES['pgvigil'])}\n")
    if not interval:
        config = without_ttls(config)
    runner = Runner(config)
    try:
        runner.scrape(timeout=60)  # warm-up: connect, capability probe, extensions
        cluster.execute("SELECT pg_stat_statements_reset()", DATABASE)
        series = 0
        for _ in range(scrapes):
            time.sleep(interval)
            result = runner.scrape(timeout=60)
            series = series_count(ScrapeText(config.queries).text(result) + render_self_metrics(result))
    finally:
        runner.close()
    ms, calls = database_time(cluster, ROLES["pgvigil"])
    return Measured(ms / scrapes, calls / scrapes, series)


def postgres_exporter_scrapes(cluster: ThrowawayCluster, scrapes: int, workdir: Path) -> Measured:
    port = free_port()
    proc = start_process("postgres_exporter", [
        ensure_postgres_exporter(), f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ], {"PATH": "/usr/bin:/bin", "DATA_SOURCE_NAME": cluster.dsn(DATABASE, ROLES["postgres_exporter"])
        + "?sslmode=disable"}, workdir)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_http(url, proc, "postgres_exporter", workdir / "postgres_exporter.log")
        urllib.request.urlopen(url, timeout=120).read()  # warm-up
        cluster.execute("SELECT pg_stat_statements_reset()", DATABASE)
        series = 0
        for _ in range(scrapes):
            series = series_count(urllib.request.urlopen(url, timeout=120).read().decode())
    finally:
        proc.terminate()
        proc.wait(10)
    ms, calls = database_time(cluster, ROLES["postgres_exporter"])
    return Measured(ms / scrapes, calls / scrapes, series if calls else 0)


def measure(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Measured], list[str]]:
    cluster = ThrowawayCluster(settings={"max_connections": "200", "max_locks_per_transaction": "512",
                                         "track_io_timing": "on", "pg_stat_statements.track_planning": "on"})
    try:
        cluster.start()
        print(f"building {args.tables} tables...", flush=True)
        build_catalog(cluster, args.tables)
        cluster.execute("CREATE EXTENSION pg_stat_statements", DATABASE)
        for role in ROLES.values():
            cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}")
        measured = {"pgvigil, every query on every scrape": pgvigil_scrapes(cluster, args.scrapes, 0.0)}
        top = top_statements(cluster, ROLES["pgvigil"], args.scrapes, args.top)
        if args.interval:
            print(f"scraping pgvigil every {args.interval:g} s, {args.shipped_scrapes} times...", flush=True)
            measured[f"pgvigil as shipped, a scrape every {args.interval:g} s"] = pgvigil_scrapes(
                cluster, args.shipped_scrapes, args.interval)
        measured["postgres_exporter 0.11 defaults"] = postgres_exporter_scrapes(cluster, args.scrapes, workdir)
        return measured, top
    finally:
        cluster.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=5000)
    parser.add_argument("--scrapes", type=int, default=10)
    add_as_shipped_arguments(parser, 20, "20 x 15 s: one cycle of the longest ttl, 5 minutes")
    parser.add_argument("--top", type=int, default=12, help="pgvigil's statements to list by database time")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pgvigil-footprint-"))
    try:
        measured, top = measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    baseline = measured["postgres_exporter 0.11 defaults"]
    print(f"{args.tables} tables; database time = planning + execution in pg_stat_statements of each exporter's role")
    print(f"  {'':46} {'ms/scrape':>9} {'statements':>10} {'series':>7} {'time':>6} {'series':>7}")
    ok = True
    for name, m in measured.items():
        ratio, more = m.ms_per_scrape / max(baseline.ms_per_scrape, 1e-9), m.series / max(baseline.series, 1)
        met = ratio <= GOALS["database_time"] and more >= GOALS["series"]
        ok = ok and (met or name.startswith("pgvigil, every"))
        print(f"  {name:46} {m.ms_per_scrape:9.1f} {m.statements_per_scrape:10.1f} {m.series:7d} {ratio:5.2f}x"
              f" {more:6.1f}x" + ("" if m is baseline else "  goal met" if met else "  goal NOT met"))
    print(f"  goal: at most {GOALS['database_time']}x postgres_exporter's database time for at least"
          f" {GOALS['series']}x its series")
    print(f"pgvigil's {args.top} most expensive statements, every query on every scrape (per scrape: ms, executions):")
    print("\n".join(f"  {line}" for line in top))
    if args.json:
        args.json.write_text(json.dumps({name: dataclasses.asdict(m) for name, m in measured.items()}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    time.tzset()
    sys.exit(main())
