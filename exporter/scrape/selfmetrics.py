"""pgvigil's own metrics: target reachability and the health of every query.

Rendered per scrape from the scrape's outcomes, so a query that timed out in
this scrape reads as failed in this scrape. Process metrics and build info come
from prometheus_client's registry.
"""
from __future__ import annotations

import platform
import threading
import time
from typing import Iterable

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.scrape.discovery import MONITORED, SKIP_OUTCOMES
from exporter.scrape.exposition import escape_label_value, render_samples
from exporter.scrape.outcome import Scrape
from exporter.scrape.sampler import self_metric_families
from exporter.scrape.state import ERROR_REASONS
from exporter.sqltext import dropped_texts

# Reasons initialised at zero on every (target, query), so increase() sees the first error;
# the rarer ones appear when they first happen, to keep the series count down.
ALWAYS_PRESENT_REASONS = ("error", "timeout")


class BuildInfoCollector:
    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("pgvigil_build_info", "pgvigil version and Python runtime; always 1",
                                   labels=["version", "python_version"])
        family.add_metric([__version__, platform.python_version()], 1)
        yield family


class SqlTextCollector:
    """Statement texts not shown because PostgreSQL could read their quotes two ways (exporter/sqltext.py)."""

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily("pgvigil_sql_texts_dropped", "SQL texts (sql_labels) exported without their text "
                                  "because PostgreSQL could read their quotes two ways", value=dropped_texts())


class ServingStats:
    """Scrapes served and the latest config reload, under pgvigil's names and postgres_exporter's (real
    dashboards' variables read them: grafana.com 9628's $namespace/$release read
    pg_exporter_last_scrape_duration_seconds, and every panel hangs on them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.scrapes = 0
        self.last_duration = 0.0
        self.reload_ok = True
        self.reloaded_at = time.time()  # the config read at start counts as the first successful load

    def scraped(self, duration: float) -> None:
        with self._lock:
            self.scrapes += 1
            self.last_duration = duration

    def reloaded(self, ok: bool) -> None:
        with self._lock:
            self.reload_ok = ok
            if ok:
                self.reloaded_at = time.time()

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            scrapes, duration, ok, at = self.scrapes, self.last_duration, self.reload_ok, self.reloaded_at
        yield CounterMetricFamily("pg_exporter_scrapes", "Scrapes served (postgres_exporter compatible)", value=scrapes)
        yield GaugeMetricFamily("pg_exporter_last_scrape_duration_seconds",
                                "Seconds the latest scrape took (postgres_exporter compatible)", value=duration)
        for prefix in ("pgvigil", "postgres_exporter"):
            yield GaugeMetricFamily(f"{prefix}_config_last_reload_successful",
                                    "Whether the latest config reload succeeded (1) or was rejected (0)", value=int(ok))
            yield GaugeMetricFamily(f"{prefix}_config_last_reload_success_timestamp_seconds",
                                    "Unix time of the latest successful config load", value=at)


def process_registry(extra_collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """Registry of process/platform metrics, build info, masked SQL texts and any extra collectors (backups)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(BuildInfoCollector())
    registry.register(SqlTextCollector())
    for collector in extra_collectors:
        registry.register(collector)
    return registry


def render_self_metrics(scrape: Scrape, registry: CollectorRegistry | None = None) -> str:
    """pgvigil's metrics of one scrape: reachability, each query's health, then the registry's."""
    families: dict[str, tuple[str, str, list]] = {
        "pg_up": ("gauge", "Whether the target's database could be reached (1) or not (0)", []),
        "pgbouncer_up": ("gauge", "Whether the PgBouncer admin console could be reached (1) or not (0)", []),
        "pgvigil_query_success": ("gauge", "Whether the query's latest run succeeded in this scrape", []),
        "pgvigil_query_duration_seconds": ("gauge", "Duration of the query's latest run", []),
        "pgvigil_query_rows": ("gauge", "Rows returned by the query's latest successful run", []),
        "pgvigil_query_series": ("gauge", "Series produced by the query's latest successful run", []),
        "pgvigil_query_last_success_timestamp_seconds": ("gauge", "Unix time of the query's latest successful run", []),
        "pgvigil_query_errors_total": ("counter", "Query failures and dropped rows by reason "
                                       "(error, timeout, invalid_value, duplicate, cardinality)", []),
        "pg_scrape_collector_duration_seconds": ("gauge", "Duration of a query's latest run, by query as the "
                                                "collector (postgres_exporter compatible)", []),
        "pg_scrape_collector_success": ("gauge", "Whether a query succeeded in this scrape, by query as the "
                                        "collector (postgres_exporter compatible)", []),
        "pgvigil_query_late_total": ("counter", "Scrapes whose deadline passed before the query's result was ready "
                                     "(the query goes on; never an error: a client sets the deadline)", []),
        "pgvigil_role_can_write": ("gauge", "1 when the target's monitoring role could write, were a query to "
                                   "escape its read-only transaction (superuser, or write privileges on a table)", []),
    }
    for state in scrape.targets:
        up = "pgbouncer_up" if state.spec.kind == "pgbouncer" else "pg_up"
        families[up][2].append((state.label_text, 1 if state.up else 0))
        facts = state.facts
        if facts is not None and state.spec.kind != "pgbouncer":
            families["pgvigil_role_can_write"][2].append((state.label_text, 1 if facts.role_can_write else 0))
    failed = any(not state.up for state in scrape.targets) or any(not root.status.success for root in scrape.discovery)
    for outcome in scrape.outcomes:
        labels = f'{outcome.target.label_text},query="{escape_label_value(outcome.query.name)}"'
        status = outcome.status
        ok = outcome.included and bool(status.success)
        failed = failed or not ok
        families["pgvigil_query_success"][2].append((labels, 1 if ok else 0))
        families["pgvigil_query_duration_seconds"][2].append((labels, status.duration))
        families["pgvigil_query_rows"][2].append((labels, status.rows))
        families["pgvigil_query_series"][2].append((labels, status.series))
        if status.last_success is not None:
            families["pgvigil_query_last_success_timestamp_seconds"][2].append((labels, status.last_success))
        families["pgvigil_query_late_total"][2].append((labels, status.late))
        collector = f'{outcome.target.label_text},collector="{escape_label_value(outcome.query.name)}"'
        families["pg_scrape_collector_duration_seconds"][2].append((collector, status.duration))
        families["pg_scrape_collector_success"][2].append((collector, 1 if ok else 0))
        for reason in ERROR_REASONS:
            if reason in ALWAYS_PRESENT_REASONS or status.errors[reason]:
                families["pgvigil_query_errors_total"][2].append((f'{labels},reason="{reason}"', status.errors[reason]))
    families["pgvigil_storage_allocation_bytes"] = (
        "gauge", "Storage allocated to the target's server (config: storage_allocation)",
        [(state.label_text, state.spec.storage_allocation_bytes) for state in scrape.targets
         if state.spec.storage_allocation_bytes is not None])
    families["pgvigil_query_skipped"] = (
        "gauge", "Queries skipped on the target because its role may not run them, an object they read is "
        "absent, or the extension they require is not installed in the target's database (reason: "
        "permission_denied, missing_relation, missing_function, missing_schema, missing_extension); never errors",
        [(f'{state.label_text},query="{escape_label_value(query)}",reason="{reason}"', 1)
         for state in scrape.targets for query, reason in state.skips.reasons().items()])
    families.update(discovery_families(scrape))
    families.update(self_metric_families(scrape.samplers))
    families["pgvigil_scrape_duration_seconds"] = ("gauge", "Seconds this scrape took", [("", scrape.duration)])
    families["pg_exporter_last_scrape_error"] = (
        "gauge", "Whether the last scrape had any failed query or unreachable target (postgres_exporter compatible)",
        [("", 1 if failed else 0)])
    text = "".join(render_samples(name, help_text, mtype, samples)
                   for name, (mtype, help_text, samples) in families.items())
    if registry is not None:
        text += generate_latest(registry).decode("utf-8")
    return text


def discovery_families(scrape: Scrape) -> dict[str, tuple[str, str, list]]:
    """The database list and connection budget of each discovery root the scrape asked."""
    databases, waiting, success, refreshed, budget, open_now = [], [], [], [], [], []
    for root in scrape.discovery:
        target = f'target="{escape_label_value(root.spec.name)}"'
        status = root.status
        counts = {MONITORED: status.monitored, **status.skipped}
        databases += [(f'{target},outcome="{outcome}"', counts[outcome]) for outcome in (MONITORED, *SKIP_OUTCOMES)]
        waiting.append((target, scrape.not_yet_scraped.get(root.spec.name, 0)))
        success.append((target, 1 if status.success else 0))
        if status.refreshed_at is not None:
            refreshed.append((target, status.refreshed_at))
        budget.append((target, root.budget.limit))
        open_now.append((target, root.budget.open))
    if not scrape.discovery:
        return {}
    return {
        "pgvigil_discovery_databases": ("gauge", "Databases of the target's server by outcome of the latest "
                                        "discovery: monitored, or why not (excluded, template, "
                                        "connections_not_allowed, no_connect_privilege, undecodable_name)",
                                        databases),
        "pgvigil_discovery_databases_not_yet_scraped": ("gauge", "Monitored databases pgvigil has not reached yet "
                                                        "(waiting for a connection of the budget): no series, "
                                                        "not down", waiting),
        "pgvigil_discovery_success": ("gauge", "Whether the latest reading of the server's database list succeeded",
                                      success),
        "pgvigil_discovery_last_success_timestamp_seconds": ("gauge", "Unix time of the latest successful reading "
                                                             "of the server's database list", refreshed),
        "pgvigil_connection_budget": ("gauge", "Connections pgvigil may open to the server at once "
                                      "(config: connection_budget)", budget),
        "pgvigil_connections_open": ("gauge", "Connections pgvigil has open to the server now", open_now),
    }
