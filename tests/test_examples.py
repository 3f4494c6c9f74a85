"""The application-level examples: load each schema, insert rows, read the expected series back."""
from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from packs.exposition import find, parse_samples, value

from exporter.config import load_config
from exporter.server import start_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
U1, U2, U3, U4, U5 = (f"00000000-0000-0000-0000-00000000000{i}" for i in range(1, 6))


class Example:
    """One example's table in a fresh database, served by its own config."""

    def __init__(self, cluster, dsn: str, name: str, monkeypatch) -> None:
        self.cluster, self.db = cluster, dsn.rsplit("/", 1)[1]
        cluster.execute((EXAMPLES / name / "schema.sql").read_text(), self.db)
        monkeypatch.setenv("PGVIGIL_DSN", dsn)
        self.config = load_config(EXAMPLES / name / "pgvigil.yaml")
        self.server = start_server(self.config)

    def sql(self, text: str) -> None:
        self.cluster.execute(text, self.db)

    def scrape(self):
        with urllib.request.urlopen(self.server.url + "/metrics", timeout=30) as response:
            samples = parse_samples(response.read().decode())
        failed = [s.labels for s in find(samples, "pgvigil_query_success") if s.value != 1]
        assert failed == []
        return samples


@pytest.fixture
def example(cluster, fresh_db, monkeypatch, request):
    made = Example(cluster, fresh_db, request.param, monkeypatch)
    yield made
    made.server.stop()


@pytest.mark.parametrize("example", ["monitoring_metrics"], indirect=True)
def test_operation_durations_become_a_cumulative_histogram(example):
    example.sql("INSERT INTO monitoring_metrics (metric_type, operation_name, duration_ms, success)"
                " VALUES ('database_operation', 'select_itineraries', 5000, true)")
    example.scrape()  # the first run only marks where counting starts: that old row is not counted
    example.sql("""
        INSERT INTO monitoring_metrics (metric_type, operation_name, duration_ms, success, "timestamp") VALUES
          ('database_operation', 'select_itineraries', 40, true, now()),
          ('database_operation', 'select_itineraries', 80, true, now()),
          ('database_operation', 'select_itineraries', 150, true, now()),
          ('database_operation', 'select_itineraries', 900, true, now()),
          ('database_operation', 'select_itineraries', 3000, false, now()),
          ('page_view', 'home', 10, true, now()),
          ('database_operation', 'select_itineraries', 70, true, now() + interval '1 hour')""")
    for _ in range(2):  # a scrape without new rows keeps the totals
        samples = example.scrape()
        ok = {"operation": "select_itineraries", "success": "true"}
        assert value(samples, "app_db_operation_duration_seconds_count", **ok) == 4
        assert value(samples, "app_db_operation_duration_seconds_sum", **ok) == pytest.approx(1.17)
        assert value(samples, "app_db_operation_duration_seconds_bucket", le="0.05", **ok) == 1
        assert value(samples, "app_db_operation_duration_seconds_bucket", le="0.1", **ok) == 2
        assert value(samples, "app_db_operation_duration_seconds_bucket", le="0.2", **ok) == 3
        assert value(samples, "app_db_operation_duration_seconds_bucket", le="1.0", **ok) == 4
        assert value(samples, "app_db_operation_duration_seconds_count",
                     operation="select_itineraries", success="false") == 1
        assert find(samples, "app_db_operation_duration_seconds_count", operation="home") == []


@pytest.mark.parametrize("example", ["security_events"], indirect=True)
def test_brute_force_and_users_on_many_addresses(example):
    example.sql(f"""
        INSERT INTO security_events (event_type, ip_address, details, "timestamp")
          SELECT 'auth_failure', '10.0.0.1', '{{"email": "a@example.com"}}', now() FROM generate_series(1, 5);
        INSERT INTO security_events (event_type, ip_address, details, "timestamp") VALUES
          ('auth_failure', '10.0.0.2', '{{"email": "b@example.com"}}', now()),
          ('auth_failure', '10.0.0.2', '{{"email": "b@example.com"}}', now()),
          ('auth_failure', '10.0.0.9', '{{"email": "a@example.com"}}', now() - interval '20 minutes');
        INSERT INTO security_events (event_type, user_id, ip_address) VALUES
          ('login', '{U1}', '192.0.2.1'), ('login', '{U1}', '192.0.2.2'),
          ('login', '{U1}', '192.0.2.3'), ('login', '{U1}', '192.0.2.4'),
          ('login', '{U2}', '192.0.2.1'), ('login', '{U2}', '192.0.2.1')""")
    samples = example.scrape()
    assert value(samples, "app_auth_failed_logins_15m", email="a@example.com") == 5
    assert value(samples, "app_auth_failed_logins_15m", email="b@example.com") == 2
    assert value(samples, "app_auth_failed_logins_by_ip_15m", ip_address="10.0.0.1") == 5
    assert find(samples, "app_auth_failed_logins_by_ip_15m", ip_address="10.0.0.9") == []
    assert value(samples, "app_security_user_distinct_ips_1h", user_id=U1) == 4
    assert find(samples, "app_security_user_distinct_ips_1h", user_id=U2) == []


@pytest.mark.parametrize("example", ["user_activity_log"], indirect=True)
def test_activity_by_type_and_active_users(example):
    example.sql(f"""
        INSERT INTO user_activity_log (user_id, activity_type, "timestamp") VALUES
          ('{U1}', 'login', now()), ('{U1}', 'login', now()), ('{U2}', 'login', now()),
          ('{U3}', 'search_performed', now()),
          ('{U4}', 'login', now() - interval '2 hours')""")
    samples = example.scrape()
    assert value(samples, "app_user_activity_events_15m", activity_type="login") == 3
    assert value(samples, "app_user_activity_users_15m", activity_type="login") == 2
    assert value(samples, "app_user_activity_events_15m", activity_type="search_performed") == 1
    assert value(samples, "app_active_users_1h") == 3


@pytest.mark.parametrize("example", ["ai_monitoring"], indirect=True)
def test_ai_generation_durations_and_tokens(example):
    example.scrape()
    example.sql("""
        INSERT INTO ai_monitoring (session_id, tokens_used, generation_duration_ms, success, model_version) VALUES
          ('s1', 300, 1500, true, 'gpt-4o'), ('s2', 1200, 3000, true, 'gpt-4o'),
          ('s3', 50, 400, false, 'gpt-4o')""")
    samples = example.scrape()
    ok = {"model_version": "gpt-4o", "success": "true"}
    assert value(samples, "app_ai_generation_tokens_sum", **ok) == 1500
    assert value(samples, "app_ai_generation_tokens_count", **ok) == 2
    assert value(samples, "app_ai_generation_tokens_bucket", le="500.0", **ok) == 1
    assert value(samples, "app_ai_generation_duration_seconds_sum", **ok) == pytest.approx(4.5)
    assert value(samples, "app_ai_generation_duration_seconds_bucket", le="2.0", **ok) == 1
    assert value(samples, "app_ai_generation_duration_seconds_count", model_version="gpt-4o", success="false") == 1


@pytest.mark.parametrize("example", ["data_access_audit"], indirect=True)
def test_cross_user_access_and_heavy_readers(example):
    example.sql(f"""
        INSERT INTO data_access_audit (user_id, accessed_user_id, resource_type, access_type, "timestamp") VALUES
          ('{U1}', '{U2}', 'animals', 'cross_user_access', now()),
          ('{U1}', '{U3}', 'animals', 'cross_user_access', now()),
          ('{U2}', '{U3}', 'animals', 'cross_user_access', now()),
          ('{U2}', '{U1}', 'journal_entries', 'cross_user_access', now() - interval '30 hours'),
          ('{U3}', '{U3}', 'animals', 'own_data', now());
        INSERT INTO data_access_audit (user_id, accessed_user_id, resource_type, access_type)
          SELECT '{U5}', '{U5}', 'animals', 'own_data' FROM generate_series(1, 1001)""")
    samples = example.scrape()
    assert value(samples, "app_data_access_cross_user_accesses_24h", resource_type="animals") == 3
    assert value(samples, "app_data_access_cross_user_users_24h", resource_type="animals") == 2
    assert find(samples, "app_data_access_cross_user_accesses_24h", resource_type="journal_entries") == []
    assert value(samples, "app_data_access_max_per_user_1h") == 1001
    assert value(samples, "app_data_access_accesses_1h") == 1005


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by scripts/test.sh")
def test_example_alert_rules_pass_promtool():
    rules = EXAMPLES / "alerts" / "app-rules.yml"
    for argv in (["check", "rules", str(rules)], ["test", "rules", str(rules.with_name("app-rules.test.yml"))]):
        done = subprocess.run(["promtool", *argv], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
