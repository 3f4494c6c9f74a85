#!/usr/bin/env python3
"""Peak RSS of one scrape of a hostile query: is pgvigil's memory bounded in bytes?

Cases (issue 11, part 2), each scraped once in a fresh process against a throwaway cluster:
  histogram_5m     5,000,000 histogram observations with max_series 100
  wide_labels      max_series 1000 with 500 KB label values (500 MB of labels)
  labels_at_bound  10,000 rows of three 2,000-byte labels and five metrics (300 MB of series text)
Prints the peak RSS (ru_maxrss) of the scraping process, its growth over the process's RSS
before the scrape, and the size of the answer.

Run from the repository root:  python3 bench/memory_bounds.py [case ...]
"""
from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {
    "histogram_5m": "  - {name: h, max_series: 100, timeout: 120s, sql: \"SELECT (g % 7)::text AS l,"
                    " g::float8 / 5e6 AS v"
                    " FROM generate_series(1, 5000000) g\", labels: [l], metrics: {v: {type: histogram,"
                    " buckets: [0.1, 0.5, 0.9]}}}\n",
    "wide_labels": "  - {name: w, max_series: 1000, timeout: 120s, sql: \"SELECT repeat('x', 500000) || g AS l, g AS v"
                   " FROM generate_series(1, 1000) g\", labels: [l], metrics: {v: {}}}\n",
    # Just under the label bound, 3 labels, 5 metrics, 10,000 rows: what the byte bounds must hold.
    "labels_at_bound": "  - {name: b, max_series: 10000, timeout: 120s, sql: \"SELECT repeat('a', 2000) || g AS l1,"
                       " repeat('b', 2000) AS l2, repeat('c', 2000) AS l3, g AS v1, g AS v2, g AS v3, g AS v4, g AS v5"
                       " FROM generate_series(1, 10000) g\", labels: [l1, l2, l3],"
                       " metrics: {v1: {}, v2: {}, v3: {}, v4: {}, v5: {}}}\n",
}


def scrape_in_this_process(dsn: str, case: str) -> None:
    from exporter.config import parse_config
    from exporter.scrape.assembly import scrape_once

    config = parse_config(f"collectors: []\ndefaults: {{scrape_timeout: 120s}}\ntargets:\n  db:\n    dsn: {dsn}\n"
                          f"queries:\n{CASES[case]}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    text = scrape_once(config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    errors = [line for line in text.splitlines() if line.startswith("pgvigil_query_errors_total") and
              not line.endswith(" 0.0")]
    print(f"{case}: peak RSS {peak / 1024:.0f} MiB (+{(peak - before) / 1024:.0f} MiB during the scrape), "
          f"answer {len(text) / 1e6:.2f} MB, {time.monotonic() - start:.1f} s; {'; '.join(errors) or 'no errors'}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        scrape_in_this_process(sys.argv[2], sys.argv[3])
        return
    from exporter.dev.throwaway import ThrowawayCluster

    cluster = ThrowawayCluster(preload=())
    cluster.start()
    try:
        for case in sys.argv[1:] or list(CASES):
            subprocess.run([sys.executable, __file__, "--child", cluster.dsn(), case], check=True)
    finally:
        cluster.cleanup()


if __name__ == "__main__":
    main()
