#!/usr/bin/env python3
"""Scrape benchmark: 5,000 tables, pgvigil against postgres_exporter and query-exporter.

Builds a catalog of N tables (default 5,000) in a throwaway PostgreSQL cluster,
starts the three exporters as separate processes on the same per-table queries
(pg_stat_user_tables + pg_statio_user_tables, the SQL of postgres_exporter's
example queries.yaml, with identical text for all three), and scrapes them in
interleaved rounds. Every scrape hits the database: ttl 0 in pgvigil, no
cache_seconds in postgres_exporter, no interval in query-exporter. The raw
psycopg fetch (execute + fetchall of the same SQL on one connection) is the
floor. pgvigil's output is parsed with prometheus_client's parser and checked
sample by sample against the rows of the raw fetch.

Run from the repository root:  python3 bench/scrape_5000.py [--tables 5000] [--scrapes 20]
Peers are installed when missing: apt-get install prometheus-postgres-exporter,
and query-exporter into its own venv (bench/.venv-peers) so its pins stay out of ours.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import psycopg
import yaml
from prometheus_client.parser import text_string_to_metric_families
from psycopg.sql import SQL, Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.config import Config  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster, free_port  # noqa: E402

DATABASE = "bench"
# Each exporter connects as its own role, so pg_stat_statements shows how often each one
# really ran the per-table query: every scrape must reach the database.
ROLES = {
    "pgvigil": "bench_pgvigil",
    "postgres_exporter": "bench_postgres_exporter",
    "query-exporter": "bench_query_exporter",
}
LABELS = ("datname", "schemaname", "relname")
PEER_VENV = ROOT / "bench" / ".venv-peers"
POSTGRES_EXPORTER = "prometheus-postgres-exporter"
TARGETS = {"vs_postgres_exporter": 0.6, "vs_raw": 1.5}

# The per-table queries of postgres_exporter's example queries.yaml. NULLs are coalesced
# and timestamps turned into epoch seconds in SQL, because query-exporter can take
# neither; all three exporters get this exact text, so every one exposes the same samples.
STAT_SQL = """\
SELECT current_database() AS datname, schemaname, relname,
       seq_scan, seq_tup_read, coalesce(idx_scan, 0) AS idx_scan, coalesce(idx_tup_fetch, 0) AS idx_tup_fetch,
       n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, n_live_tup, n_dead_tup, n_mod_since_analyze,
       date_part('epoch', coalesce(last_vacuum, 'epoch')) AS last_vacuum,
       date_part('epoch', coalesce(last_autovacuum, 'epoch')) AS last_autovacuum,
       date_part('epoch', coalesce(last_analyze, 'epoch')) AS last_analyze,
       date_part('epoch', coalesce(last_autoanalyze, 'epoch')) AS last_autoanalyze,
       vacuum_count, autovacuum_count, analyze_count, autoanalyze_count
FROM pg_stat_user_tables"""

STATIO_SQL = """\
SELECT current_database() AS datname, schemaname, relname,
       heap_blks_read, heap_blks_hit,
       coalesce(idx_blks_read, 0) AS idx_blks_read, coalesce(idx_blks_hit, 0) AS idx_blks_hit,
       coalesce(toast_blks_read, 0) AS toast_blks_read, coalesce(toast_blks_hit, 0) AS toast_blks_hit,
       coalesce(tidx_blks_read, 0) AS tidx_blks_read, coalesce(tidx_blks_hit, 0) AS tidx_blks_hit
FROM pg_statio_user_tables"""

# query name -> (SQL, [(column, type, help)])
QUERIES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "pg_stat_user_tables": (STAT_SQL, [
        ("seq_scan", "counter", "Number of sequential scans initiated on this table"),
        ("seq_tup_read", "counter", "Number of live rows fetched by sequential scans"),
        ("idx_scan", "counter", "Number of index scans initiated on this table"),
        ("idx_tup_fetch", "counter", "Number of live rows fetched by index scans"),
        ("n_tup_ins", "counter", "Number of rows inserted"),
        ("n_tup_upd", "counter", "Number of rows updated"),
        ("n_tup_del", "counter", "Number of rows deleted"),
        ("n_tup_hot_upd", "counter", "Number of rows HOT updated"),
        ("n_live_tup", "gauge", "Estimated number of live rows"),
        ("n_dead_tup", "gauge", "Estimated number of dead rows"),
        ("n_mod_since_analyze", "gauge", "Estimated number of rows changed since last analyze"),
        ("last_vacuum", "gauge", "Last manual vacuum (epoch seconds)"),
        ("last_autovacuum", "gauge", "Last autovacuum (epoch seconds)"),
        ("last_analyze", "gauge", "Last manual analyze (epoch seconds)"),
        ("last_autoanalyze", "gauge", "Last autoanalyze (epoch seconds)"),
        ("vacuum_count", "counter", "Manual vacuums of this table"),
        ("autovacuum_count", "counter", "Autovacuums of this table"),
        ("analyze_count", "counter", "Manual analyzes of this table"),
        ("autoanalyze_count", "counter", "Autoanalyzes of this table"),
    ]),
    "pg_statio_user_tables": (STATIO_SQL, [
        ("heap_blks_read", "counter", "Disk blocks read from this table"),
        ("heap_blks_hit", "counter", "Buffer hits in this table"),
        ("idx_blks_read", "counter", "Disk blocks read from all indexes on this table"),
        ("idx_blks_hit", "counter", "Buffer hits in all indexes on this table"),
        ("toast_blks_read", "counter", "Disk blocks read from this table's TOAST table"),
        ("toast_blks_hit", "counter", "Buffer hits in this table's TOAST table"),
        ("tidx_blks_read", "counter", "Disk blocks read from this table's TOAST table indexes"),
        ("tidx_blks_hit", "counter", "Buffer hits in this table's TOAST table indexes"),
    ]),
}
FAMILIES = {f"{query}_{col}" for query, (_, metrics) in QUERIES.items() for col, _, _ in metrics}
BARE_COLUMNS = {col: f"{query}_{col}" for query, (_, metrics) in QUERIES.items() for col, _, _ in metrics}


# ---------------------------------------------------------------------------
# catalog

def without_ttls(config: Config) -> Config:
    """Every query on every scrape: no result served from cache, and every pick run again."""
    return replace(config, queries=tuple(
        replace(q, ttl=0.0, pick=None if q.pick is None else replace(q.pick, every=0.0)) for q in config.queries))


def add_as_shipped_arguments(parser: argparse.ArgumentParser, scrapes: int, length: str) -> None:
    """--interval and --shipped-scrapes: pgvigil's packs as shipped, scraped as Prometheus would."""
    parser.add_argument("--interval", type=float, default=15.0,
                        help="seconds between the as-shipped scrapes (a Prometheus scrape interval); 0: skip them")
    parser.add_argument("--shipped-scrapes", type=int, default=scrapes, help=f"as-shipped scrapes ({length})")


def build_catalog(cluster: ThrowawayCluster, tables: int, batch: int = 250) -> None:
    """N tables with a primary key and a TOAST-able column, some rows, scans and analyzes,
    so the statistics hold varied numbers and timestamps rather than zeros."""
    cluster.create_database(DATABASE)
    conn = psycopg.connect(cluster.dsn(DATABASE), autocommit=True)
    try:
        with conn.cursor() as cur:
            for start in range(0, tables, batch):
                stop = min(tables, start + batch)
                # One transaction per batch keeps the lock table within max_locks_per_transaction.
                cur.execute(f"""DO $$ BEGIN FOR i IN {start}..{stop - 1} LOOP
                    EXECUTE format('CREATE TABLE t_%s (id int PRIMARY KEY, payload text)', i);
                    EXECUTE format('INSERT INTO t_%s SELECT g, md5(g::text) FROM generate_series(1, %s) g', i, i % 97);
                    IF i % 3 = 0 THEN EXECUTE format('DELETE FROM t_%s WHERE id %% 2 = 0', i); END IF;
                    IF i % 5 = 0 THEN EXECUTE format('SELECT count(*) FROM t_%s', i); END IF;
                END LOOP; END $$""")
            cur.execute("ANALYZE")
            cur.execute("SELECT pg_stat_force_next_flush()")
    finally:
        conn.close()
    time.sleep(1.5)  # let the statistics of the last transactions reach shared memory


def churn(conn: psycopg.Connection, tables: int, fraction: float, round_no: int) -> None:
    """Activity between rounds: a rotating share of the tables gets an insert, an index scan and a
    sequential scan, so their counters change from one scrape to the next as on a live database
    (a static catalog would let an exporter that caches unchanged output look better than it is)."""
    step = max(1, round(1 / fraction)) if fraction > 0 else 0
    if not step:
        return
    touched = list(range(round_no % step, tables, step))
    with conn.cursor() as cur:
        for start in range(0, len(touched), 250):  # one transaction per 250 tables: bounded lock table
            # DO takes no parameters: the array is a literal in its text.
            cur.execute(SQL("""DO $$ DECLARE i int; BEGIN FOREACH i IN ARRAY {} LOOP
                EXECUTE format('INSERT INTO t_%s SELECT coalesce(max(id), 0) + 1, md5(random()::text) \
FROM t_%s', i, i);
                EXECUTE format('SELECT count(*) FROM t_%s', i);
            END LOOP; END $$""").format(Literal(touched[start:start + 250])))
        cur.execute("SELECT pg_stat_force_next_flush()")  # flushed before this statement returns


# ---------------------------------------------------------------------------
# exporter configs (one definition, three dialects)

def pgvigil_config(dsn: str) -> dict:
    queries = [{
        "name": name, "help": f"{name} (benchmark)", "sql": sql, "labels": list(LABELS),
        "metrics": {col: {"type": kind, "help": text} for col, kind, text in metrics},
    } for name, (sql, metrics) in QUERIES.items()]
    return {"targets": {"bench": {"dsn": dsn}}, "collectors": [],
            "defaults": {"ttl": "0s", "timeout": "60s", "scrape_timeout": "120s", "max_series": 100000},
            "queries": queries}


def postgres_exporter_queries() -> dict:
    out = {}
    for name, (sql, metrics) in QUERIES.items():
        columns = [{label: {"usage": "LABEL", "description": label}} for label in LABELS]
        columns += [{col: {"usage": kind.upper(), "description": text}} for col, kind, text in metrics]
        out[name] = {"query": sql, "master": True, "metrics": columns}
    return out


def query_exporter_config(dsn: str) -> dict:
    metrics, queries = {}, {}
    for name, (sql, columns) in QUERIES.items():
        for col, kind, text in columns:
            metrics[col] = {"type": kind, "description": text, "labels": list(LABELS)}
        queries[name] = {"databases": ["bench"], "metrics": [col for col, _, _ in columns], "sql": sql}
    # psycopg 3, the driver pgvigil uses (named: SQLAlchemy before 2.1 picks psycopg2 for postgresql://).
    driver_dsn = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    return {"databases": {"bench": {"dsn": driver_dsn}}, "metrics": metrics, "queries": queries}


# ---------------------------------------------------------------------------
# peers

def ensure_postgres_exporter() -> str:
    path = shutil.which(POSTGRES_EXPORTER)
    if path:
        return path
    print("installing prometheus-postgres-exporter (apt-get)...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", POSTGRES_EXPORTER]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    path = shutil.which(POSTGRES_EXPORTER)
    if not path:
        sys.exit(f"{POSTGRES_EXPORTER} is not on PATH after installing it")
    return path


def ensure_query_exporter(venv: Path) -> Path:
    binary = venv / "bin" / "query-exporter"
    driver = [str(venv / "bin" / "python"), "-c", "import psycopg"]  # a venv made for psycopg2 lacks it
    if binary.exists() and subprocess.run(driver, capture_output=True).returncode == 0:
        return binary
    print(f"installing query-exporter into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    "query-exporter", "psycopg[binary]"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return binary


# ---------------------------------------------------------------------------
# processes and measurements

@dataclass
class Contender:
    name: str
    scrape: Callable[[], bytes]
    url: str = ""
    proc: subprocess.Popen | None = None
    times: list[float] = field(default_factory=list)
    body: bytes = b""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def served(name: str, port: int, proc: subprocess.Popen) -> Contender:
    """An exporter process scraped over HTTP like Prometheus does (one GET, whole body)."""
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> bytes:
        with urllib.request.urlopen(url, timeout=300) as resp:
            return resp.read()
    return Contender(name, scrape, url, proc)


def wait_for_http(url: str, proc: subprocess.Popen, name: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-10:]
            sys.exit(f"{name} exited with code {proc.returncode} before serving:\n  " + "\n  ".join(tail))
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{name} did not answer on {url} within {timeout:.0f}s")


def start_process(name: str, argv: list[str], env: dict, workdir: Path) -> subprocess.Popen:
    log = open(workdir / f"{name}.log", "wb")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def raw_fetcher(dsn: str) -> tuple[Callable[[], bytes], Callable[[], dict]]:
    """The floor: execute + fetchall of both queries on one persistent connection, never prepared
    (neither are pgvigil's queries)."""
    conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
    last: dict[str, tuple[list[str], list[tuple]]] = {}

    def fetch() -> bytes:
        with conn.cursor() as cur:
            for name, (sql, _) in QUERIES.items():
                cur.execute(sql)
                last[name] = ([d.name for d in cur.description], cur.fetchall())
        return b""

    return fetch, lambda: last


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---------------------------------------------------------------------------
# correctness

def expected_samples(raw: dict) -> dict[tuple, float]:
    """(metric name, labels) -> value for every sample the SQL returned."""
    expected = {}
    for name, (_sql, metrics) in QUERIES.items():
        columns, rows = raw[name]
        index = {c: i for i, c in enumerate(columns)}
        for row in rows:
            labels = tuple(str(row[index[label]]) for label in LABELS)
            for col, _, _ in metrics:
                value = row[index[col]]
                if value is not None:
                    expected[(f"{name}_{col}", labels)] = float(value)
    return expected


def family_of(sample_name: str) -> str | None:
    """The per-table family of a parsed sample: the parser adds `_total` to counters, and
    query-exporter names its metrics by bare column (seq_scan), as its config requires."""
    name = sample_name[: -len("_total")] if sample_name.endswith("_total") else sample_name
    if name in FAMILIES:
        return name
    return BARE_COLUMNS.get(name)


def table_samples(body: bytes) -> dict[tuple, float]:
    """Samples of the per-table families in an exposition, parsed by prometheus_client."""
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            name = family_of(sample.name)
            if name is not None:
                labels = tuple(sample.labels.get(label, "") for label in LABELS)
                found[(name, labels)] = sample.value
    return found


def verify_pgvigil(body: bytes, expected: dict[tuple, float]) -> list[str]:
    found = table_samples(body)
    problems = []
    if len(found) != len(expected):
        problems.append(f"pgvigil exposed {len(found)} per-table samples, the SQL returned {len(expected)}")
    wrong = [key for key, value in expected.items() if found.get(key) != value]
    if wrong:
        problems.append(f"{len(wrong)} samples differ from the SQL, e.g. {wrong[0]}: "
                        f"{found.get(wrong[0])} != {expected[wrong[0]]}")
    return problems


def prepare_roles(cluster: ThrowawayCluster) -> None:
    for role in ROLES.values():
        cluster.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    cluster.execute("CREATE EXTENSION pg_stat_statements", dbname=DATABASE)
    cluster.execute("SELECT pg_stat_statements_reset()", dbname=DATABASE)


def database_executions(dsn: str) -> dict[str, int]:
    """Executions of the pg_stat_user_tables query per exporter role, from pg_stat_statements."""
    conn = psycopg.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT r.rolname, sum(s.calls)::int"
                        " FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
                        " WHERE position('FROM pg_stat_user_tables' IN s.query) > 0 AND r.rolname = ANY(%s)"
                        " GROUP BY r.rolname",
                        (list(ROLES.values()),))
            by_role = dict(cur.fetchall())
    finally:
        conn.close()
    return {name: by_role.get(role, 0) for name, role in ROLES.items()}


def check_executions(executions: dict[str, int], names: list[str], scrapes: int) -> list[str]:
    print("  executions of the pg_stat_user_tables query (pg_stat_statements): "
          + ", ".join(f"{name} {executions[name]}" for name in names) + f" for {scrapes} scrapes each")
    return [f"{name} ran the query {executions[name]} times for {scrapes} scrapes:"
            " some scrapes were served from a cache"
            for name in names if executions[name] < scrapes]


# ---------------------------------------------------------------------------
# report

def pgvigil_self_report(body: bytes) -> dict[str, float]:
    """pgvigil's own timing of its last scrape: whole scrape and each query (fetch + render)."""
    timings = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            if sample.name == "pgvigil_scrape_duration_seconds":
                timings["scrape"] = sample.value
            elif sample.name == "pgvigil_query_duration_seconds":
                timings[sample.labels["query"]] = sample.value
    print("\n  pgvigil's own timing of its last scrape: "
          + ", ".join(f"{name} {value * 1000:.1f}ms" for name, value in timings.items()))
    return timings


def report(contenders: list[Contender], rss: dict[str, float], cpu: dict[str, float],
           counts: dict[str, int]) -> dict:
    by_name = {c.name: c for c in contenders}
    medians = {c.name: statistics.median(c.times) for c in contenders}
    pe, raw = medians.get("postgres_exporter"), medians["raw fetch"]
    rows = []
    if pe is None:
        print("\n(postgres_exporter not run: no ratios against it)")
    header = (f"{'':22}{'median':>10}{'p90':>10}{'vs pg_exp':>11}{'vs raw':>9}{'CPU/scrape':>12}"
              f"{'peak RSS':>11}{'samples':>10}")
    print("\n" + header)
    print("-" * len(header))
    for c in contenders:
        med, p90 = medians[c.name], percentile(c.times, 0.9)
        vs_pe = med / pe if pe else float("nan")
        vs_raw = med / raw
        mem, used = rss.get(c.name), cpu.get(c.name)
        print(f"{c.name:22}{med * 1000:8.1f}ms{p90 * 1000:8.1f}ms{vs_pe:10.2f}x{vs_raw:8.2f}x"
              f"{(f'{used * 1000:8.1f}ms' if used is not None else '-'):>12}"
              f"{(f'{mem:7.1f} MiB' if mem is not None else '-'):>11}{counts.get(c.name, '-'):>10}")
        rows.append({"name": c.name, "median_s": med, "p90_s": p90, "vs_postgres_exporter": vs_pe if pe else None,
                     "vs_raw": vs_raw, "cpu_per_scrape_s": used, "peak_rss_mib": mem,
                     "samples": counts.get(c.name), "times_s": c.times})
    verdicts = {}
    if "pgvigil" in by_name:
        if pe is not None:
            verdicts["median <= 0.6x postgres_exporter"] = medians["pgvigil"] <= 0.6 * pe
        verdicts["median <= 1.5x raw fetch"] = medians["pgvigil"] <= 1.5 * raw
        if "postgres_exporter" in rss:
            verdicts["peak RSS <= postgres_exporter"] = rss["pgvigil"] <= rss["postgres_exporter"]
        print()
        for what, ok in verdicts.items():
            print(f"  {'PASS' if ok else 'MISS'}  pgvigil {what}")
    return {"results": rows, "verdicts": verdicts}


# ---------------------------------------------------------------------------
# main

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=5000)
    parser.add_argument("--scrapes", type=int, default=20, help="measured scrapes per exporter (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--churn", type=float, default=0.1,
                        help="share of the tables written and scanned before each round (default 0.1)")
    parser.add_argument("--only", nargs="*", choices=["pgvigil", "postgres_exporter", "query_exporter"],
                        help="run only these exporters (default: all three)")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    wanted = set(args.only or ["pgvigil", "postgres_exporter", "query_exporter"])
    pe_binary = ensure_postgres_exporter() if "postgres_exporter" in wanted else None
    qe_binary = ensure_query_exporter(args.peer_venv) if "query_exporter" in wanted else None
    workdir = Path(tempfile.mkdtemp(prefix="pgvigil-bench-"))
    procs: dict[str, subprocess.Popen] = {}
    settings = {"autovacuum": "off", "max_connections": "50", "shared_buffers": "256MB"}
    cluster = ThrowawayCluster(settings=settings, preload=("pg_stat_statements",))
    try:
        cluster.start()
        print(f"building {args.tables} tables ...", flush=True)
        started = time.monotonic()
        build_catalog(cluster, args.tables)
        print(f"catalog ready in {time.monotonic() - started:.1f}s", flush=True)
        dsn = cluster.dsn(DATABASE)
        prepare_roles(cluster)
        fetch, last_raw = raw_fetcher(dsn)
        churner = psycopg.connect(dsn, autocommit=True)
        contenders = [Contender("raw fetch", fetch)]
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}

        if "pgvigil" in wanted:
            config = workdir / "pgvigil.yaml"
            config.write_text(yaml.safe_dump(pgvigil_config(cluster.dsn(DATABASE, ROLES["pgvigil"])), sort_keys=False))
            port = free_port()
            procs["pgvigil"] = start_process("pgvigil", [sys.executable, "-m", "exporter", "serve", "--config",
                                                        str(config), "--listen", f"127.0.0.1:{port}",
                                                        "--log-level", "warning"],
                                             dict(base_env, PYTHONPATH=str(ROOT)), workdir)
            contenders.append(served("pgvigil", port, procs["pgvigil"]))
        if pe_binary:
            queries = workdir / "postgres_exporter.yaml"
            queries.write_text(yaml.safe_dump(postgres_exporter_queries(), sort_keys=False))
            port = free_port()
            pe_dsn = cluster.dsn(DATABASE, ROLES["postgres_exporter"]) + "?sslmode=disable"
            procs["postgres_exporter"] = start_process("postgres_exporter", [
                pe_binary, f"--web.listen-address=127.0.0.1:{port}", f"--extend.query-path={queries}",
                "--disable-default-metrics", "--disable-settings-metrics",
                "--no-collector.database", "--no-collector.bgwriter", "--log.level=warn",
            ], dict(base_env, DATA_SOURCE_NAME=pe_dsn), workdir)
            contenders.append(served("postgres_exporter", port, procs["postgres_exporter"]))
        if qe_binary:
            config = workdir / "query_exporter.yaml"
            qe_dsn = cluster.dsn(DATABASE, ROLES["query-exporter"])
            config.write_text(yaml.safe_dump(query_exporter_config(qe_dsn), sort_keys=False))
            port = free_port()
            # Without _created series its sample count matches the other two.
            env = dict(base_env, PROMETHEUS_DISABLE_CREATED_SERIES="True")
            procs["query_exporter"] = start_process("query-exporter", [
                str(qe_binary), "--config", str(config), "-H", "127.0.0.1", "-p", str(port), "-L", "error",
            ], env, workdir)
            contenders.append(served("query-exporter", port, procs["query_exporter"]))

        for c in contenders[1:]:
            wait_for_http(c.url, c.proc, c.name, workdir / f"{c.name}.log")
        print(f"warming up ({args.warmup} scrapes each) ...", flush=True)
        for _ in range(args.warmup):
            for c in contenders:
                c.body = c.scrape()
        load_before = os.getloadavg()[0]
        print(f"measuring {args.scrapes} interleaved rounds (load average {load_before:.1f}) ...", flush=True)
        cpu_before = {c.name: cpu_seconds(c.proc.pid) for c in contenders if c.proc}
        for round_no in range(args.scrapes):
            churn(churner, args.tables, args.churn, round_no)
            for c in contenders:
                start = time.perf_counter()
                c.body = c.scrape()
                c.times.append(time.perf_counter() - start)

        load_after = os.getloadavg()[0]
        rss = {c.name: peak_rss_mib(c.proc.pid) for c in contenders if c.proc}
        cpu = {name: (cpu_seconds(c.proc.pid) - cpu_before[name]) / args.scrapes
               for c in contenders if c.proc for name in [c.name]}
        expected = expected_samples(last_raw())
        counts = {"raw fetch": len(expected)}
        counts.update({c.name: len(table_samples(c.body)) for c in contenders[1:]})
        summary = report(contenders, rss, cpu, counts)
        if "pgvigil" in wanted:
            summary["pgvigil_self"] = pgvigil_self_report(next(c.body for c in contenders if c.name == "pgvigil"))
        summary["executions"] = database_executions(dsn)
        problems = check_executions(summary["executions"], [c.name for c in contenders[1:]],
                                    args.warmup + args.scrapes)
        if "pgvigil" in wanted:
            wrong = verify_pgvigil(next(c.body for c in contenders if c.name == "pgvigil"), expected)
            problems += wrong
            if not wrong:
                print(f"  OK    pgvigil exposed exactly the {len(expected)} samples the SQL returned, same values")
        print(f"  load average {load_before:.1f} before and {load_after:.1f} after the measured rounds"
              f" on {os.cpu_count()} CPUs (other load on the machine inflates every figure)")
        summary.update({"tables": args.tables, "scrapes": args.scrapes, "churn": args.churn,
                        "load_average": [load_before, load_after], "cpus": os.cpu_count(),
                        "python": sys.version.split()[0], "problems": problems})
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        if problems:
            print("\nFAILED:\n  " + "\n  ".join(problems))
            return 1
        return 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        cluster.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
