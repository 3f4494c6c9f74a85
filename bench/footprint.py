#!/usr/bin/env python3
"""Database time per scrape: pgvigil's default packs against postgres_exporter's defaults.

Builds a catalog of N tables (default 5,000, bench/scrape_5000.py's catalog) in a throwaway
cluster. Each exporter connects as its own role; pg_stat_statements of that role gives the
database time it spent (total_exec_time, planning excluded on both sides) and how many
statements it ran. pgvigil runs every default query on every scrape (ttl forced to 0, so no
scrape is served from cache); postgres_exporter 0.11 (Debian's prometheus-postgres-exporter)
runs its default collectors. The series each one exports per scrape are counted from its text.

Run from the repository root:  python3 bench/footprint.py [--tables 5000] [--scrapes 10]
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

from scrape_5000 import DATABASE, build_catalog, ensure_postgres_exporter, start_process, wait_for_http  # noqa: E402

from exporter.config import parse_config  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster, free_port  # noqa: E402
from exporter.scrape.assembly import ScrapeText  # noqa: E402
from exporter.scrape.runner import Runner  # noqa: E402
from exporter.scrape.selfmetrics import render_self_metrics  # noqa: E402

ROLES = {"pgvigil": "footprint_pgvigil", "postgres_exporter": "footprint_postgres_exporter"}
GOALS = {"database_time": 0.5, "series": 5.0}  # at most half the time, at least 5x the series


def series_count(text: str) -> int:
    return sum(len(family.samples) for family in text_string_to_metric_families(text))


def database_time(cluster: ThrowawayCluster) -> dict[str, tuple[float, int]]:
    """Per exporter: (milliseconds of execution, statements executed) since the last reset."""
    rows = cluster.execute("SELECT r.rolname, sum(s.total_exec_time), sum(s.calls)::bigint FROM pg_stat_statements s"
                           " JOIN pg_roles r ON r.oid = s.userid GROUP BY r.rolname", DATABASE)
    by_role = {role: (float(ms), int(calls)) for role, ms, calls in rows}
    return {name: by_role.get(role, (0.0, 0)) for name, role in ROLES.items()}


def top_statements(cluster: ThrowawayCluster, role: str, scrapes: int, count: int) -> list[str]:
    """The `count` statements of `role` that took the most database time, per scrape."""
    rows = cluster.execute(
        "SELECT s.total_exec_time, s.calls, regexp_replace(s.query, '\\s+', ' ', 'g') FROM pg_stat_statements s"
        f" JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role}' ORDER BY 1 DESC LIMIT {count}", DATABASE)
    return [f"{ms / scrapes:8.1f} ms {calls / scrapes:5.1f}x  {_query_name(text)}" for ms, calls, text in rows]


def _query_name(text: str) -> str:
    """A statement's first words, or the innermost FROM of pgvigil's wrapped query."""
    inner = text.split(") AS pgvigil_query")[0]
    if "FROM ( " in inner:
        inner = inner.split("FROM ( ", 1)[1]
    return inner[:90]


def pgvigil_scrapes(cluster: ThrowawayCluster, scrapes: int) -> int:
    config = parse_config(f"targets:\n  bench: {cluster.dsn(DATABASE, ROLES['pgvigil'])}\n")
    config = dataclasses.replace(config, queries=tuple(dataclasses.replace(q, ttl=0.0) for q in config.queries))
    runner = Runner(config)
    try:
        runner.scrape(timeout=60)  # warm-up: connect, capability probe, extensions
        cluster.execute("SELECT pg_stat_statements_reset()", DATABASE)
        series = 0
        for _ in range(scrapes):
            result = runner.scrape(timeout=60)
            series = series_count(ScrapeText(config.queries).text(result) + render_self_metrics(result))
        return series
    finally:
        runner.close()


def postgres_exporter_scrapes(cluster: ThrowawayCluster, scrapes: int, workdir: Path) -> int:
    port = free_port()
    proc = start_process("postgres_exporter", [
        ensure_postgres_exporter(), f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ], {"PATH": "/usr/bin:/bin", "DATA_SOURCE_NAME": cluster.dsn(DATABASE, ROLES["postgres_exporter"])
        + "?sslmode=disable"}, workdir)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_http(url, proc, "postgres_exporter", workdir / "postgres_exporter.log")
        urllib.request.urlopen(url, timeout=120).read()  # warm-up
        before = database_time(cluster)["postgres_exporter"]
        series = 0
        for _ in range(scrapes):
            series = series_count(urllib.request.urlopen(url, timeout=120).read().decode())
        after = database_time(cluster)["postgres_exporter"]
        return series if after[1] > before[1] else 0
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=5000)
    parser.add_argument("--scrapes", type=int, default=10)
    parser.add_argument("--top", type=int, default=12, help="pgvigil's statements to list by database time")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pgvigil-footprint-"))
    cluster = ThrowawayCluster(settings={"max_connections": "200", "max_locks_per_transaction": "512",
                                         "track_io_timing": "on"})
    try:
        cluster.start()
        print(f"building {args.tables} tables...", flush=True)
        build_catalog(cluster, args.tables)
        cluster.execute("CREATE EXTENSION pg_stat_statements", DATABASE)
        for role in ROLES.values():
            cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}")
        series = {"pgvigil": pgvigil_scrapes(cluster, args.scrapes)}
        pgvigil_time = database_time(cluster)["pgvigil"]
        top = top_statements(cluster, ROLES["pgvigil"], args.scrapes, args.top)
        cluster.execute("SELECT pg_stat_statements_reset()", DATABASE)
        series["postgres_exporter"] = postgres_exporter_scrapes(cluster, args.scrapes, workdir)
        # postgres_exporter's time: reset after pgvigil's run, so everything since is its own
        times = {"pgvigil": pgvigil_time, "postgres_exporter": database_time(cluster)["postgres_exporter"]}
    finally:
        cluster.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    per_scrape = {name: ms / args.scrapes for name, (ms, _) in times.items()}
    figures = {"tables": args.tables, "scrapes": args.scrapes,
               "database_ms_per_scrape": per_scrape, "series_per_scrape": series,
               "statements_per_scrape": {name: calls / args.scrapes for name, (_, calls) in times.items()},
               "ratio_database_time": per_scrape["pgvigil"] / max(per_scrape["postgres_exporter"], 1e-9),
               "ratio_series": series["pgvigil"] / max(series["postgres_exporter"], 1)}
    print(f"{args.tables} tables, {args.scrapes} scrapes each (pg_stat_statements of each exporter's role)")
    for name in ROLES:
        print(f"  {name:18} {per_scrape[name]:8.1f} ms database time per scrape, "
              f"{figures['statements_per_scrape'][name]:5.1f} statements, {series[name]:6d} series")
    print(f"  pgvigil / postgres_exporter: database time {figures['ratio_database_time']:.2f}x "
          f"(goal <= {GOALS['database_time']}x), series {figures['ratio_series']:.1f}x (goal >= {GOALS['series']}x)")
    print(f"pgvigil's {args.top} most expensive statements (per scrape: time, executions, text):")
    print("\n".join(f"  {line}" for line in top))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    ok = figures["ratio_database_time"] <= GOALS["database_time"] and figures["ratio_series"] >= GOALS["series"]
    return 0 if ok else 1


if __name__ == "__main__":
    time.tzset()
    sys.exit(main())
