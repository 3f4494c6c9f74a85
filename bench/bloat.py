#!/usr/bin/env python3
"""What the bloat pack costs the database: wide tables, many tables, the demo.

Three databases in one throwaway cluster, each analyzed, read by a monitoring role with pg_monitor
and SELECT on the tables (pg_stats shows a role only the columns it may read, so without it there
is nothing to estimate and nothing to measure):

- wide: --wide-tables tables (default 5) of --wide-columns columns (default 1,600, PostgreSQL's
  maximum) of mixed types (int, bigint, text, bool, numeric, float8, timestamptz, jsonb; some
  NULL in a third of the rows, some always NULL, a few with values TOASTed or compressed), a
  primary key and a 32-column index each;
- many: --tables ordinary tables (default 2,000) of 10 columns, a primary key and a second index,
  each over the pack's 10-page floor (every tenth table's indexes too), some with deleted rows: the
  picks choose 200 of the tables and 200 of the indexes;
- demo: the demo's shop schema (exporter/dev/demo.py);
- widest (only with --cases widest): the most the picks let through, 200 tables of 1,600 columns
  (12 rows each, so over the 10-page floor).

pgvigil's own runner scrapes each database --scrapes times with the bloat pack alone, every query
and pick run on every scrape (ttls forced to 0); pg_stat_statements of the role (planning plus
execution, track_planning on) gives the database time of each of the pack's four statements per
scrape. With --baseline REV the pack's SQL at that git revision is measured the same way on the
same databases, and the two must export exactly the same series and values. --explain prints
EXPLAIN (ANALYZE, BUFFERS) of each estimate query (the picks' ids filled in) as the monitoring role.

Run from the repository root:  python3 bench/bloat.py [--baseline main] [--scrapes 5] [--explain] [--major 18]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scrape_5000 import without_ttls  # noqa: E402

from exporter.config import EXCLUDED_SCHEMAS_PLACEHOLDER, Config, parse_config, schema_array  # noqa: E402
from exporter.dev.demo import prepare_database  # noqa: E402
from exporter.dev.servers import SUPPORTED_MAJORS, server_bindir  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster  # noqa: E402
from exporter.scrape.assembly import ScrapeText  # noqa: E402
from exporter.scrape.runner import Runner  # noqa: E402
from exporter.scrape.session import prepare_sql  # noqa: E402

ROLE = "bloat_bench"
SPENT = "s.total_plan_time + s.total_exec_time"
# The pack's four statements, told apart in pg_stat_statements by words only each one has.
STATEMENTS = (("table estimate", "tuple_bytes"), ("table pick", "n_dead_tup"),
              ("index estimate", "entry_bytes"), ("index pick", "ORDER BY i.relpages DESC"))
# Column j of a wide table: its type and the value of row g (NULL where the expression says so).
WIDE_TYPES = (
    ("int", "g + {j}"),
    ("bigint", "CASE WHEN (g + {j}) % 3 <> 0 THEN g::bigint * {j} END"),
    ("text", "CASE WHEN (g + {j}) % 3 <> 0 THEN 'v' || (g % 97) END"),
    ("bool", "g % 2 = 0"),
    ("numeric", "CASE WHEN (g + {j}) % 3 <> 0 THEN (g % 1000) / 7.0 END"),
    ("float8", "NULL"),
    ("timestamptz", "CASE WHEN (g + {j}) % 3 = 0 THEN now() END"),
    ("smallint", "(g % 100)::smallint"),
)
TOASTED = 4  # the first columns of a wide table hold large text and jsonb values: compressed or moved out


def wide_table_sql(name: str, columns: int, rows: int) -> str:
    defs, values = ["id int PRIMARY KEY"], ["g"]
    for j in range(1, columns):
        if j <= TOASTED:
            kind = "jsonb" if j % 2 else "text"
            defs.append(f"c{j} {kind}")
            values.append(f"pg_catalog.to_jsonb(repeat(md5(g::text || '{j}'), 80 * {j}))" if kind == "jsonb"
                          else f"repeat(md5(g::text), 40 * {j})")
            continue
        kind, expr = WIDE_TYPES[j % len(WIDE_TYPES)]
        defs.append(f"c{j} {kind}")
        values.append(expr.format(j=j))
    index = ", ".join(f"c{j}" for j in range(TOASTED + 1, TOASTED + 32))
    return (f"CREATE TABLE {name} ({', '.join(defs)}) WITH (autovacuum_enabled = false);"
            f"INSERT INTO {name} SELECT {', '.join(values)} FROM generate_series(1, {rows}) g;"
            f"CREATE INDEX {name}_wide ON {name} ({index});"
            f"DELETE FROM {name} WHERE id % 4 = 0")


def build_wide(cluster: ThrowawayCluster, tables: int, columns: int, rows: int, database: str = "wide") -> None:
    cluster.create_database(database)
    for i in range(tables):
        cluster.execute(wide_table_sql(f"wide_{i}", columns, rows), database)
    cluster.execute("VACUUM ANALYZE", database)


def build_many(cluster: ThrowawayCluster, tables: int, rows: int, batch: int = 100) -> None:
    cluster.create_database("many")
    conn = psycopg.connect(cluster.dsn("many"), autocommit=True)
    try:
        with conn.cursor() as cur:
            for start in range(0, tables, batch):
                stop = min(tables, start + batch)
                # One transaction per batch keeps the lock table within max_locks_per_transaction.
                cur.execute(f"""DO $$ BEGIN FOR i IN {start}..{stop - 1} LOOP
                    EXECUTE format('CREATE TABLE t_%s (id int PRIMARY KEY, a int, b bigint, c text, d timestamptz,
                        e numeric, f bool, g float8, h text, k date) WITH (autovacuum_enabled = false)', i);
                    EXECUTE format('INSERT INTO t_%s SELECT n, n %% 100, n * 7, md5(n::text), now(), n / 3.0,
                        n %% 2 = 0, n * 1.5, CASE WHEN n %% 4 = 0 THEN ''note '' || n END,
                        date ''2020-01-01'' + n %% 900
                        FROM generate_series(1, %s) n', i,
                        CASE WHEN i % 10 = 0 THEN 5 * {rows} ELSE {rows} + i % 50 END);
                    EXECUTE format('CREATE INDEX t_%s_a ON t_%s (a, b)', i, i);
                    IF i % 5 = 0 THEN EXECUTE format('DELETE FROM t_%s WHERE id %% 3 = 0', i); END IF;
                END LOOP; END $$""")
            cur.execute("VACUUM ANALYZE")
    finally:
        conn.close()


def build_demo(cluster: ThrowawayCluster) -> None:
    prepare_database(cluster.create_database("demo"))


def with_sql_of(config: Config, revision: str) -> Config:
    """The config with the bloat pack's SQL (estimates and picks) as it was at a git revision."""
    text = subprocess.run(["git", "show", f"{revision}:exporter/packs/bloat.yaml"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    old = {q["name"]: q for q in yaml.safe_load(text)["queries"]}
    excluded = schema_array(config.defaults.exclude_schemas)

    def sql(text: str) -> str:
        return text.replace(EXCLUDED_SCHEMAS_PLACEHOLDER, excluded)

    queries = []
    for q in config.queries:
        if q.name in old and q.pick is not None:
            q = dataclasses.replace(q, sql=sql(old[q.name]["sql"]),
                                    pick=dataclasses.replace(q.pick, sql=sql(old[q.name]["pick"]["sql"])))
        queries.append(q)
    return dataclasses.replace(config, queries=tuple(queries))


def per_statement(cluster: ThrowawayCluster, database: str) -> dict[str, tuple[float, int]]:
    """(ms, calls) of each of the pack's statements by the role since the last reset."""
    rows = cluster.execute(f"SELECT {SPENT}, s.calls, s.query FROM pg_stat_statements s JOIN pg_roles r"
                           f" ON r.oid = s.userid WHERE r.rolname = '{ROLE}'", database)
    out: dict[str, tuple[float, int]] = {}
    for ms, calls, text in rows:
        for name, marker in STATEMENTS:
            if marker in text:
                spent, count = out.get(name, (0.0, 0))
                out[name] = (spent + float(ms), count + int(calls))
                break
    return out


@dataclasses.dataclass
class Measured:
    ms: dict[str, list[float]]   # statement -> database ms per scrape
    series: list[str]            # the pg_bloat_ lines of the last scrape


def measure(cluster: ThrowawayCluster, database: str, config: Config, scrapes: int) -> Measured:
    runner = Runner(config)
    ms: dict[str, list[float]] = {name: [] for name, _ in STATEMENTS}
    text = ""
    try:
        runner.scrape(timeout=600)  # warm-up: connect, capability probe
        for _ in range(scrapes):
            cluster.execute("SELECT pg_stat_statements_reset()", database)
            result = runner.scrape(timeout=600)
            text = ScrapeText(config.queries).text(result)
            spent = per_statement(cluster, database)
            for name, _ in STATEMENTS:
                value, calls = spent.get(name, (0.0, 0))
                if calls != 1:
                    sys.exit(f"{database}: {name} ran {calls} times in a scrape (a timeout or an error?)")
                ms[name].append(value)
    finally:
        runner.close()
    return Measured(ms, sorted(line for line in text.splitlines() if line.startswith("pg_bloat_")))


def explain(cluster: ThrowawayCluster, database: str, config: Config) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of each estimate, as the role, with its pick's ids."""
    conn = psycopg.connect(cluster.dsn(database, ROLE), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET search_path = pg_catalog, pg_temp")
            for q in config.queries:
                if q.pack != "bloat" or q.pick is None:
                    continue
                cur.execute(q.pick.sql)
                picked = [int(r[0]) for r in cur.fetchall()]
                sql = prepare_sql(q, None, picked=picked).sql
                cur.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
                print(f"--- {database}: {q.name} ({len(picked)} picked)")
                print("\n".join(row[0] for row in cur.fetchall()))
    finally:
        conn.close()


def config_for(cluster: ThrowawayCluster, database: str) -> Config:
    return without_ttls(parse_config(
        f"collectors: [bloat]\ndefaults: {{timeout: 120s, scrape_timeout: 600s}}\n"
        f"targets:\n  bench: {cluster.dsn(database, ROLE)}\n"))


def summary(m: Measured) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in m.ms.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wide-tables", type=int, default=5)
    parser.add_argument("--wide-columns", type=int, default=1600)
    parser.add_argument("--wide-rows", type=int, default=1000)
    parser.add_argument("--tables", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1000,
                        help="rows per ordinary table (about 13 pages; every tenth has five times as many)")
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--baseline", metavar="REV", help="also measure the pack's SQL at this git revision")
    parser.add_argument("--cases", default="wide,many,demo", help="of wide, many, demo, widest")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--major", type=int, choices=SUPPORTED_MAJORS,
                        help="PostgreSQL major to run (exporter/dev/servers.py); default: the newest installed")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops and removes the cluster
    cases = args.cases.split(",")
    cluster = ThrowawayCluster(settings={"max_locks_per_transaction": "1024", "autovacuum": "off",
                                         "pg_stat_statements.track_planning": "on"},
                               bindir=server_bindir(args.major) if args.major else None)
    results: dict[str, dict[str, dict[str, float]]] = {}
    differ = False
    try:
        cluster.start()
        started = time.monotonic()
        builders = {"wide": lambda: build_wide(cluster, args.wide_tables, args.wide_columns, args.wide_rows),
                    "many": lambda: build_many(cluster, args.tables, args.rows),
                    "demo": lambda: build_demo(cluster),
                    "widest": lambda: build_wide(cluster, 200, args.wide_columns, 12, "widest")}
        for case in cases:
            print(f"building {case}...", flush=True)
            builders[case]()
        print(f"built in {time.monotonic() - started:.0f} s", flush=True)
        cluster.execute(f"CREATE ROLE {ROLE} LOGIN; GRANT pg_monitor TO {ROLE}")
        for case in cases:
            cluster.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", case)
            cluster.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}", case)
        version = cluster.execute("SHOW server_version")[0][0]
        for case in cases:
            shipped = config_for(cluster, case)
            variants = {"shipped": shipped}
            if args.baseline:
                variants[args.baseline] = with_sql_of(shipped, args.baseline)
            measured = {name: measure(cluster, case, config, args.scrapes) for name, config in variants.items()}
            if args.explain:
                for config in variants.values():
                    explain(cluster, case, config)
            results[case] = {name: summary(m) for name, m in measured.items()}
            print(f"\n{case}: database ms per scrape (median of {args.scrapes}; each scrape's in brackets),"
                  f" PostgreSQL {version}; {len(measured['shipped'].series)} series")
            for name, m in measured.items():
                for statement, values in m.ms.items():
                    runs = " ".join(f"{v:.1f}" for v in values)
                    print(f"  {name:10} {statement:15} {statistics.median(values):9.1f}   [{runs}]")
                print(f"  {name:10} {'total':15} {sum(summary(m).values()):9.1f}")
            if args.baseline and measured["shipped"].series != measured[args.baseline].series:
                differ = True
                print(f"  DIFFERENT ESTIMATES: shipped and {args.baseline} do not export the same series and values")
            elif args.baseline:
                print(f"  shipped and {args.baseline}: the same {len(measured['shipped'].series)} series and values")
    finally:
        cluster.cleanup()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
