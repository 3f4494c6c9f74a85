#!/usr/bin/env python3
"""Render cost alone (no database, no HTTP) of the 5,000-table result, by value distribution.

scrape_5000.py's catalog has small, repeating statistics (tables of 0 to 96 rows). A large
production catalog has big, distinct counters, and those cost more to format. This script
renders synthetic results of the same shape (the two per-table queries of scrape_5000.py,
135,000 samples) through exporter.scrape.render.render_rows and prints the CPU time per scrape for:

  repeated   values like the benchmark catalog's, 10 % of the rows changing between scrapes
  distinct   every counter distinct and >= 1e6, 10 % of the rows changing between scrapes
  all new    every counter distinct and >= 1e6, every value changing between scrapes

Run from the repository root:  python3 bench/render_only.py
"""
from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scrape_5000 import LABELS, QUERIES, pgvigil_config  # noqa: E402

from exporter.config import parse_config  # noqa: E402

TABLES = 5000
TIMESTAMP_COLUMNS = {"last_vacuum", "last_autovacuum", "last_analyze", "last_autoanalyze"}


def base_rows(distinct: bool) -> dict[str, tuple[list[str], list[list]]]:
    rng = random.Random(7)
    results = {}
    for name, (_, metrics) in QUERIES.items():
        columns = [*LABELS, *(col for col, _, _ in metrics)]
        rows = []
        for t in range(TABLES):
            row: list = ["bench", "public", f"t_{t}"]
            for col, _, _ in metrics:
                if col in TIMESTAMP_COLUMNS:
                    row.append(0.0 if col != "last_analyze" else 1.7e9 + rng.random() * 1e6)
                elif distinct:
                    row.append(rng.randrange(10 ** 6, 10 ** 11))
                else:
                    row.append(rng.choice((0, 0, 0, 1, 2, 5, t % 97, 2 * (t % 97))))
            rows.append(row)
        results[name] = (columns, rows)
    return results


def advance(results: dict, share: float, scrape: int) -> None:
    """Counters grow on `share` of the rows (a rotating set), as between two scrapes."""
    step = max(1, round(1 / share))
    for columns, rows in results.values():
        for i in range(scrape % step, len(rows), step):
            row = rows[i]
            for c in range(len(LABELS), len(columns)):
                if type(row[c]) is int:
                    row[c] += 1 + i % 3


def measure(distinct: bool, share: float, scrapes: int = 15) -> float:
    from exporter.scrape.render import render_rows

    config = parse_config(yaml.safe_dump(pgvigil_config("postgresql://bench@127.0.0.1/bench")))
    results = base_rows(distinct)
    layouts: dict = {}
    times = []
    for scrape in range(scrapes + 2):
        advance(results, share, scrape)
        snapshot = {name: (cols, [tuple(r) for r in rows]) for name, (cols, rows) in results.items()}
        start = time.thread_time()
        for query in config.queries:
            columns, rows = snapshot[query.name]
            run = render_rows(query, columns, rows, 'target="bench"', {}, layouts.get(query.name))
            layouts[query.name] = run.layout
        if scrape >= 2:  # the first two build the layout
            times.append(time.thread_time() - start)
    return statistics.median(times)


def main() -> None:
    print(f"render CPU per scrape, {TABLES} tables, {sum(len(m) for _, m in QUERIES.values()) * TABLES} samples")
    for label, distinct, share in (("repeated, 10 % of rows change", False, 0.1),
                                   ("distinct >= 1e6, 10 % of rows change", True, 0.1),
                                   ("distinct >= 1e6, all values change", True, 1.0)):
        print(f"  {label:40} {measure(distinct, share) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
