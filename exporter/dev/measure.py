"""Series count of a default scrape on a wide catalog: the figures behind docs/metrics.md's sizing.

Run `python -m exporter.dev.measure` and copy its output into MEASURED in the metrics doc generator.
"""
from __future__ import annotations

import re
import uuid

import yaml

from exporter.config import parse_config
from exporter.dev.throwaway import ThrowawayCluster
from exporter.scrape.assembly import scrape_once


def measure_default_scrape(tables: int = 5000) -> dict:
    """Series of a default scrape on a fresh cluster whose database holds `tables` tables."""
    with ThrowawayCluster() as pg:
        db = "wide_" + uuid.uuid4().hex[:6]
        dsn = pg.create_database(db)
        pg.execute("CREATE EXTENSION pg_stat_statements", db)
        for first in range(1, tables + 1, 500):  # one transaction would run out of lock slots
            last = min(first + 499, tables)
            pg.execute(f"DO $$ BEGIN FOR i IN {first}..{last} LOOP "
                       f"EXECUTE format('CREATE TABLE t_%s (id int PRIMARY KEY, v text)', i); END LOOP; END $$", db)
        text = scrape_once(parse_config(f"targets:\n  app:\n    dsn: {dsn}\n"))
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    per_table = [s for s in series if s.startswith(("pg_stat_user_tables_", "pg_statio_user_tables_",
                                                    "pg_stat_user_indexes_", "pg_index_", "pg_security_table_",
                                                    "pg_vector_index_"))]
    relnames = (re.search(r'relname="([^"]*)"', s) for s in series if s.startswith("pg_stat_user_tables_n_live_tup"))
    reported = {match.group(1) for match in relnames if match}
    return {"tables": tables, "series": len(series), "per_table_series": len(per_table),
            "tables_reported": len(reported)}


if __name__ == "__main__":
    print(yaml.safe_dump(measure_default_scrape(), sort_keys=False).rstrip())
