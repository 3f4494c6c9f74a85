#!/usr/bin/env python3
"""pg_stat_statements without the cost: pgvigil's statements pack against a collector reading the view.

Fills pg_stat_statements with N distinct statements (default 5,000) with long texts: an IN list of
k constants is a different statement for each k (PostgreSQL 13-17), so statement k is about 7 bytes
times k long and the query-text file holds tens of MB. Then each exporter, as its own role, is
scraped S times; pg_stat_statements of that role gives the database time per scrape.

pgvigil: its `statements` pack, ttls forced to 0 (pg_stat_statements(false), top 100 by growth and
a remainder). postgres_exporter: Debian's 0.11.1 has no statements collector, so it runs the SQL of
the stat_statements collector of postgres_exporter 0.15-0.17 (the view, top 100 by total time)
through --extend.query-path; that SQL is what costs the database time being compared.

Run from the repository root:  python3 bench/statements.py [--statements 5000] [--scrapes 5]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scrape_5000 import ensure_postgres_exporter, start_process, wait_for_http, without_ttls  # noqa: E402

from exporter.config import parse_config  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster, free_port  # noqa: E402
from exporter.scrape.runner import Runner  # noqa: E402

ROLES = {"pgvigil": "pgss_pgvigil", "postgres_exporter": "pgss_postgres_exporter"}
# postgres_exporter's stat_statements collector (collector/pg_stat_statements.go, 0.15-0.17, PG 13+).
PE_STATEMENTS_SQL = """\
SELECT pg_get_userbyid(userid) AS user, pg_database.datname, pg_stat_statements.queryid,
       pg_stat_statements.calls AS calls_total,
       pg_stat_statements.total_exec_time / 1000.0 AS seconds_total,
       pg_stat_statements.rows AS rows_total,
       pg_stat_statements.blk_read_time / 1000.0 AS block_read_seconds_total,
       pg_stat_statements.blk_write_time / 1000.0 AS block_write_seconds_total
FROM pg_stat_statements
JOIN pg_database ON pg_database.oid = pg_stat_statements.dbid
WHERE total_exec_time > (SELECT percentile_cont(0.1) WITHIN GROUP (ORDER BY total_exec_time)
                         FROM pg_stat_statements)
ORDER BY seconds_total DESC
LIMIT 100"""


def fill(cluster: ThrowawayCluster, statements: int) -> int:
    """N distinct statements; returns the size of the query-text file in bytes."""
    conn = psycopg.connect(cluster.dsn(), autocommit=True)
    with conn.cursor() as cur:
        for k in range(1, statements + 1):
            cur.execute(f"SELECT count(*) FROM pg_class WHERE oid IN ({','.join(str(i) for i in range(k))})")
        cur.execute("SELECT sum(length(query)) FROM pg_stat_statements")
        size = int(cur.fetchone()[0])
    conn.close()
    return size


def database_time(cluster: ThrowawayCluster, role: str) -> float:
    rows = cluster.execute("SELECT coalesce(sum(s.total_exec_time), 0) FROM pg_stat_statements(false) s"
                           f" JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role}'")
    return float(rows[0][0])


def run_pgvigil(cluster: ThrowawayCluster, scrapes: int) -> float:
    config = parse_config(f"collectors: [statements]\ntargets:\n  bench: {cluster.dsn('postgres', ROLES['pgvigil'])}\n")
    config = without_ttls(config)
    runner = Runner(config)
    try:
        runner.scrape(timeout=120)  # warm-up
        before = database_time(cluster, ROLES["pgvigil"])
        for _ in range(scrapes):
            runner.scrape(timeout=120)
        return (database_time(cluster, ROLES["pgvigil"]) - before) / scrapes
    finally:
        runner.close()


def run_postgres_exporter(cluster: ThrowawayCluster, scrapes: int, workdir: Path) -> float:
    queries = workdir / "queries.yaml"
    queries.write_text(yaml.safe_dump({"pg_stat_statements": {
        "query": PE_STATEMENTS_SQL, "metrics": [
            {"user": {"usage": "LABEL"}}, {"datname": {"usage": "LABEL"}}, {"queryid": {"usage": "LABEL"}},
            *({column: {"usage": "COUNTER", "description": column}} for column in (
                "calls_total", "seconds_total", "rows_total", "block_read_seconds_total",
                "block_write_seconds_total"))]}}))
    port = free_port()
    proc = start_process("postgres_exporter", [
        ensure_postgres_exporter(), f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        f"--extend.query-path={queries}", "--disable-default-metrics", "--disable-settings-metrics",
    ], {"PATH": "/usr/bin:/bin", "DATA_SOURCE_NAME": cluster.dsn("postgres", ROLES["postgres_exporter"])
        + "?sslmode=disable"}, workdir)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_http(url, proc, "postgres_exporter", workdir / "postgres_exporter.log")
        body = urllib.request.urlopen(url, timeout=300).read()  # warm-up
        assert b"pg_stat_statements_seconds_total" in body, "postgres_exporter did not run the statements query"
        before = database_time(cluster, ROLES["postgres_exporter"])
        for _ in range(scrapes):
            urllib.request.urlopen(url, timeout=300).read()
        return (database_time(cluster, ROLES["postgres_exporter"]) - before) / scrapes
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--statements", type=int, default=5000)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pgvigil-statements-"))
    cluster = ThrowawayCluster(settings={"pg_stat_statements.max": str(args.statements + 1000),
                                         "track_io_timing": "on"})
    try:
        cluster.start()
        cluster.execute("CREATE EXTENSION pg_stat_statements")
        for role in ROLES.values():
            cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}")
        print(f"filling pg_stat_statements with {args.statements} statements...", flush=True)
        text_bytes = fill(cluster, args.statements)
        per_scrape = {"pgvigil": run_pgvigil(cluster, args.scrapes),
                      "postgres_exporter": run_postgres_exporter(cluster, args.scrapes, workdir)}
    finally:
        cluster.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = per_scrape["pgvigil"] / max(per_scrape["postgres_exporter"], 1e-9)
    print(f"{args.statements} statements, {text_bytes / 1e6:.0f} MB of query text, {args.scrapes} scrapes each")
    for name, ms in per_scrape.items():
        print(f"  {name:18} {ms:8.1f} ms database time per scrape")
    print(f"  pgvigil / postgres_exporter: {ratio:.3f}x")
    if args.json:
        args.json.write_text(json.dumps({"ms_per_scrape": per_scrape, "ratio": ratio, "text_bytes": text_bytes},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
