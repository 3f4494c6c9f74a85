#!/usr/bin/env python3
"""How big a fleet: what one server target and one discovered database cost pgvigil and the pipeline behind it.

Builds a throwaway PostgreSQL with D databases of T tables each (default 20 x 50: a "cluster of 20
databases"), starts `pgvigil serve` as a process of its own (default packs, shipped ttls, a
`databases: all` target) and scrapes it the way a fleet shard does: each entry of `/sd`, through
`/probe?target=...`, every --interval seconds (15 s, the fleet's scrape interval).

1. Phase A probes the server target alone (its DSN database: the cluster-wide queries), phase B the
   server and every discovered database. Per round: the series (sample lines) and bytes of each
   answer (text, and gzipped on the wire as Prometheus asks for it), the pgvigil process' CPU time
   (/proc utime+stime), its resident memory. A database's cost
   is (B - A) / D.
2. From those: the largest configuration one pgvigil serves at the interval within --cpu-budget cores
   (0.5), as clusters of D databases, and the wall time of a round.
3. Remote write: one Prometheus (deploy/fleet's shard config, one shard) scrapes the same pgvigil
   every --rw-interval seconds and remote-writes into VictoriaMetrics for --rw-seconds; bytes per sample
   sent (`prometheus_remote_storage_bytes_total / prometheus_remote_storage_samples_total`) and
   VictoriaMetrics' bytes per stored sample (`vm_data_size_bytes / vm_rows`, early: compression improves
   as parts merge).

Run from the repository root:  python3 bench/fleet.py [--databases 20] [--tables 50] [--rounds 4]
                                [--interval 15] [--json FILE]
Figures and the fleet sizing drawn from them: docs/scaling.md.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import yaml  # noqa: E402

from exporter.bundle import fleet  # noqa: E402
from exporter.dev import stack, victoria  # noqa: E402
from exporter.dev.throwaway import ThrowawayCluster, free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def build(cluster: ThrowawayCluster, databases: int, tables: int) -> None:
    cluster.execute("CREATE DATABASE fleet_template")
    cluster.execute(f"""DO $$ BEGIN FOR i IN 0..{tables - 1} LOOP
        EXECUTE format('CREATE TABLE t_%s (id int PRIMARY KEY, payload text)', i);
        EXECUTE format('INSERT INTO t_%s SELECT g, md5(g::text) FROM generate_series(1, %s) g', i, 10 + i % 50);
    END LOOP; END $$""", "fleet_template")
    cluster.execute("VACUUM ANALYZE", "fleet_template")
    for i in range(databases):
        cluster.execute(f"CREATE DATABASE app_{i:03} TEMPLATE fleet_template")
    cluster.execute("ALTER DATABASE fleet_template IS_TEMPLATE true")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return answer.read()


def scrape(url: str) -> tuple[bytes, int]:
    """An answer asked for as Prometheus asks (gzip): its text, and the bytes that crossed the wire."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        wire = answer.read()
        gzipped = answer.headers["Content-Encoding"] == "gzip"
    return (gzip.decompress(wire) if gzipped else wire), len(wire)


def series_in(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def serve(config_path: str, listen: str, no_ttl: bool) -> int:
    """The pgvigil process of the benchmark (`--serve`): the shipped packs, or with every ttl 0."""
    from scrape_5000 import without_ttls

    from exporter.config import load_config
    from exporter.server import start_server
    config = load_config(config_path)
    start_server(without_ttls(config) if no_ttl else config, listen=listen)
    while True:
        time.sleep(3600)


def start_pgvigil(dsn: str, workdir: Path, no_ttl: bool) -> tuple[subprocess.Popen, str]:
    config = workdir / "pgvigil.yaml"
    config.write_text(f"targets:\n  bench:\n    dsn: {dsn}\n    databases: all\n")
    port = free_port()
    log = open(workdir / "pgvigil.log", "wb")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(config), "--listen", f"127.0.0.1:{port}",
                             *(["--no-ttl"] if no_ttl else [])], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"pgvigil exited: {(workdir / 'pgvigil.log').read_text()[-2000:]}")
        try:
            get(url + "/health")
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("pgvigil did not answer within 60 s")


def rounds(proc: subprocess.Popen, url: str, targets: list[str], count: int, interval: float) -> dict:
    """Probe every target of `targets` once per round, rounds `interval` apart (the first is a warm-up)."""
    per_round: list[dict] = []
    for index in range(count + 1):
        started, cpu = time.monotonic(), cpu_seconds(proc.pid)
        sizes = {}
        for target in targets:
            body, wire = scrape(f"{url}/probe?target={urllib.request.quote(target, safe='')}")
            sizes[target] = (series_in(body), len(body), wire)
        wall = time.monotonic() - started
        if index:
            per_round.append({"cpu": cpu_seconds(proc.pid) - cpu, "wall": wall, "sizes": sizes})
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    last = per_round[-1]["sizes"]
    # the mean: a query whose ttl is longer than the interval runs in some rounds only
    return {"cpu_per_round": statistics.fmean(r["cpu"] for r in per_round),
            "wall_per_round": statistics.median(r["wall"] for r in per_round),
            "series": sum(s for s, _, _ in last.values()), "bytes": sum(b for _, b, _ in last.values()),
            "wire_bytes": sum(w for _, _, w in last.values()),
            "rss_kib": memory_kib(proc.pid, "VmRSS"), "hwm_kib": memory_kib(proc.pid, "VmHWM"), "sizes": last}


def remote_write(pgvigil_url: str, seconds: float, interval: float, workdir: Path) -> dict:
    """Bytes per sample on the wire (Prometheus remote write) and on disk (VictoriaMetrics)."""
    with victoria.start_victoria_metrics(workdir / "vm") as vm:
        topology = fleet.Topology(shards=1, pgvigil=(pgvigil_url.removeprefix("http://"),),
                                  victoria_metrics=vm.url, scrape_interval=f"{interval:.0f}s", sd_refresh="5s")
        (workdir / "prom").mkdir()
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(fleet.shard_config(topology, 0), sort_keys=False))
        with stack._launch("prometheus", workdir / "prom", False, lambda port: [  # noqa: SLF001
                stack.find_binary(stack.PROMETHEUS_BINARIES), f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'prom' / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]) as prom:
            time.sleep(seconds)
            metrics = parse_metrics(get(prom.url + "/metrics"))
        get(vm.url + "/internal/force_flush")
        time.sleep(2)
        stored = parse_metrics(get(vm.url + "/metrics"))
    sent_bytes = metrics.get("prometheus_remote_storage_bytes_total", 0.0)
    samples = metrics.get("prometheus_remote_storage_samples_total", 0.0)
    return {"samples_sent": samples, "bytes_sent": sent_bytes,
            "bytes_per_sample_sent": sent_bytes / samples if samples else None,
            "prometheus_head_series": metrics.get("prometheus_tsdb_head_series", 0.0),
            "prometheus_rss_bytes": metrics.get("process_resident_memory_bytes", 0.0),
            "vm_rss_bytes": stored.get("process_resident_memory_bytes", 0.0),
            "vm_rows": stored.get("vm_rows", 0.0), "vm_bytes": stored.get("vm_data_size_bytes", 0.0),
            "vm_bytes_per_row": (stored.get("vm_data_size_bytes", 0.0) / stored["vm_rows"])
            if stored.get("vm_rows") else None}


def parse_metrics(body: bytes) -> dict[str, float]:
    """name -> the sum of its samples over every label set."""
    totals: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", type=int, default=20)
    parser.add_argument("--tables", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--cpu-budget", type=float, default=0.5, help="cores one pgvigil may use")
    parser.add_argument("--rw-seconds", type=float, default=60.0)
    parser.add_argument("--rw-interval", type=float, default=5.0)
    parser.add_argument("--no-ttl", action="store_true",
                        help="every query on every scrape (the upper bound; default: the shipped ttls)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--serve", metavar="CONFIG", help=argparse.SUPPRESS)  # the pgvigil process itself
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.listen, args.no_ttl)

    with tempfile.TemporaryDirectory(prefix="pgvigil-fleet-bench-") as tmp, ThrowawayCluster() as cluster:
        workdir = Path(tmp)
        build(cluster, args.databases, args.tables)
        proc, url = start_pgvigil(cluster.dsn(), workdir, args.no_ttl)
        try:
            targets = [group["labels"]["__param_target"] for group in json.loads(get(url + "/sd"))]
            server = [t for t in targets if t == "bench/postgres"]
            a = rounds(proc, url, server, args.rounds, args.interval)
            b = rounds(proc, url, targets, args.rounds, args.interval)
            rw = (remote_write(url, args.rw_seconds, args.rw_interval, workdir)
                  if victoria.installed() and args.rw_seconds > 0 else None)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report(args, a, b, rw)
    return 0


def report(args: argparse.Namespace, a: dict, b: dict, rw: dict | None) -> None:
    d = args.databases
    per_db = {"series": (b["series"] - a["series"]) / d, "bytes": (b["bytes"] - a["bytes"]) / d,
              "cpu": (b["cpu_per_round"] - a["cpu_per_round"]) / d, "rss_kib": (b["rss_kib"] - a["rss_kib"]) / d}
    per_cluster_cpu = a["cpu_per_round"] + d * per_db["cpu"]
    budget = args.cpu_budget * args.interval
    clusters = int(budget // per_cluster_cpu) if per_cluster_cpu > 0 else None
    out = {
        "databases": d, "tables": args.tables, "interval": args.interval, "ttls": "0" if args.no_ttl else "shipped",
        "server_target": {k: a[k] for k in ("series", "bytes", "cpu_per_round", "wall_per_round", "rss_kib")},
        "per_database": per_db,
        "cluster": {"series": b["series"], "bytes": b["bytes"], "wire_bytes": b["wire_bytes"],
                    "cpu_per_scrape": b["cpu_per_round"],
                    "wall_per_scrape": b["wall_per_round"], "rss_kib": b["rss_kib"], "hwm_kib": b["hwm_kib"]},
        "largest_at_budget": {"clusters": clusters, "databases": clusters * d if clusters else None,
                              "cpu_budget_cores": args.cpu_budget},
        "remote_write": rw,
    }
    print(f"ttls: {'all 0 (every query on every scrape)' if args.no_ttl else 'as shipped'}; "
          f"{args.rounds} rounds {args.interval:.0f}s apart")
    print(f"server target (DSN database, cluster-wide queries): {a['series']} series, {a['bytes']} bytes, "
          f"{a['cpu_per_round'] * 1000:.0f} ms CPU per scrape")
    print(f"per discovered database ({args.tables} tables): {per_db['series']:.0f} series, "
          f"{per_db['bytes']:.0f} bytes, {per_db['cpu'] * 1000:.1f} ms CPU per scrape, "
          f"{per_db['rss_kib'] / 1024:.2f} MiB resident")
    print(f"a cluster of {d}: {b['series']} series, {b['bytes'] / 1024:.0f} KiB of text per scrape "
          f"({b['wire_bytes'] / 1024:.0f} KiB gzipped on the wire), "
          f"{b['cpu_per_round'] * 1000:.0f} ms CPU and {b['wall_per_round']:.2f} s wall per scrape round, "
          f"RSS {b['rss_kib'] / 1024:.0f} MiB (peak {b['hwm_kib'] / 1024:.0f} MiB)")
    if clusters is not None:
        print(f"largest at {args.interval:.0f}s within {args.cpu_budget} core: {clusters} clusters of {d} "
              f"({clusters * d} databases, {clusters * b['series']} series)")
    if rw:
        print(f"remote write: {rw['bytes_per_sample_sent']:.2f} bytes per sample sent "
              f"({rw['samples_sent']:.0f} samples); VictoriaMetrics: {rw['vm_bytes_per_row'] or 0:.2f} bytes per "
              f"stored sample after {args.rw_seconds:.0f}s")
        print(f"memory: Prometheus {rw['prometheus_rss_bytes'] / 2**20:.0f} MiB for {rw['prometheus_head_series']:.0f} "
              f"head series, VictoriaMetrics {rw['vm_rss_bytes'] / 2**20:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
