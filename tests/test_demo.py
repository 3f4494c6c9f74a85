"""`pgvigil demo` without Prometheus: the workload shows up in pgvigil's metrics, and stop() leaves nothing."""
from __future__ import annotations

import re
import time
import urllib.request

from click.testing import CliRunner

from exporter.cli import main
from exporter.dev.demo import Demo


def sample(text: str, name: str, **labels: str) -> list[float]:
    """Values of the series of `name` whose labels include `labels`."""
    values = []
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            values.append(float(match.group(2)))
    return values


def test_demo_workload_feeds_the_dashboards_and_cleans_up():
    running = Demo(with_prometheus=False).start()
    workdir, cluster_dir = running.workdir, running.cluster.base
    try:
        time.sleep(2)  # the lock waiter and the idle transaction settle
        with urllib.request.urlopen(running.urls()["pgvigil"], timeout=30) as answer:
            text = answer.read().decode()
    finally:
        running.stop()
    assert sample(text, "pg_up", target="demo") == [1.0]
    assert sample(text, "pg_index_invalid", target="demo", indexrelname="coupons_code_key") == [1.0]
    assert sample(text, "pg_index_unused", target="demo", indexrelname="customers_created_idx") == [1.0]
    assert sample(text, "pg_stat_activity_waiting_count", target="demo", datname="shop")[0] >= 1
    assert sample(text, "pg_stat_activity_max_idle_in_transaction_seconds", target="demo", datname="shop")[0] > 0
    assert sample(text, "pg_stat_activity_max_query_duration_seconds", target="demo", datname="shop")[0] > 0
    assert sample(text, "pg_replication_slots_active", target="demo", slot_name="decommissioned_standby") == [0.0]
    assert sample(text, "pg_replication_slots_active", target="demo", slot_name="demo_replica") == [1.0]
    assert sample(text, "pg_up", target="demo-replica") == [1.0]
    assert sample(text, "pg_replication_is_replica", target="demo") == [0.0]
    assert sample(text, "pg_replication_is_replica", target="demo-replica") == [1.0]  # not mistaken for its primary
    # the streaming replica and the reporting subscription's walsender
    assert len(sample(text, "pg_stat_replication_pg_wal_lsn_diff", target="demo")) == 2
    assert sample(text, "pg_stat_subscription_enabled", target="demo", subname="shop_reporting") == [1.0]
    assert sample(text, "pg_replication_slot_safe_wal_size_bytes", target="demo", slot_name="shop_reporting")[0] > 0
    assert sample(text, "pg_stat_progress_vacuum_heap_blks", target="demo", relname="audit_log")[0] > 0
    assert sample(text, "pg_stat_archiver_archived_count", target="demo")[0] >= 1
    assert sample(text, "pgvigil_backup_last_verify_success", target="demo") == [1.0]
    failing = [line for line in text.splitlines()
               if line.startswith("pgvigil_query_success{") and line.endswith(" 0.0")]
    assert not failing, "shipped queries fail on the demo:\n" + "\n".join(failing)
    assert not workdir.exists() and not cluster_dir.exists(), "the demo left files behind"


def test_demo_command_prints_urls_and_stops_after_duration():
    result = CliRunner().invoke(main, ["demo", "--no-prometheus", "--duration", "0"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^pgvigil\s+http://127\.0\.0\.1:\d+/metrics$", result.output, re.M)
    assert re.search(r"^PostgreSQL\s+postgresql://postgres@127\.0\.0\.1:\d+/shop$", result.output, re.M)
    assert "demo stopped" in result.output
