"""One scrape's exposition text, assembled from the rendered runs it includes.

Families come in config order, each with one HELP/TYPE header, its samples gathered
from every target and from every version-specific query that feeds it.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Iterable

from exporter.config import Config, MetricType, QuerySpec
from exporter.scrape.exposition import family_header
from exporter.scrape.outcome import Scrape
from exporter.scrape.render import RenderedRun
from exporter.scrape.runner import Runner
from exporter.scrape.sampler import render_samplers
from exporter.scrape.selfmetrics import render_self_metrics


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    type: MetricType
    queries: tuple[str, ...]


def family_order(queries: Iterable[QuerySpec]) -> list[Family]:
    """Metric families in config order; one family may come from several version-specific queries."""
    found: dict[str, Family] = {}
    for query in queries:
        for metric in query.metrics:
            known = found.get(metric.name)
            if known is None:
                found[metric.name] = Family(metric.name, metric.help, metric.type, (query.name,))
            else:
                found[metric.name] = Family(known.name, known.help, known.type, known.queries + (query.name,))
    return list(found.values())


class ScrapeText:
    """Assembles the query results of scrapes of one config into exposition text."""

    def __init__(self, queries: Iterable[QuerySpec]) -> None:
        self.families = family_order(queries)

    def parts(self, scrape: Scrape) -> list[bytes]:
        """The query results of one scrape as UTF-8 chunks, ready to send without a join."""
        by_query: dict[str, list[RenderedRun]] = collections.defaultdict(list)
        for outcome in scrape.outcomes:
            if outcome.included and outcome.status.result is not None:
                by_query[outcome.query.name].append(outcome.status.result)
        parts: list[bytes] = []
        for family in self.families:
            chunks = [run.lines.get(family.name, b"") for q in family.queries for run in by_query.get(q, ())]
            chunks = [c for c in chunks if c]
            if chunks:
                parts.append(family_header(family.name, family.help, family.type).encode("utf-8"))
                parts.extend(chunks)
        parts.extend(render_samplers(scrape.samplers))  # sessions sampled between scrapes
        return parts

    def text(self, scrape: Scrape) -> str:
        """The query results of one scrape (self-metrics are rendered separately)."""
        return b"".join(self.parts(scrape)).decode("utf-8")


def scrape_once(config: Config, timeout: float | None = None) -> str:
    """Run one full scrape and return the exposition text (query results and self-metrics)."""
    runner = Runner(config)
    try:
        scrape = runner.scrape(timeout)
        return ScrapeText(config.queries).text(scrape) + render_self_metrics(scrape)
    finally:
        runner.close()
