"""One target between scrapes: its spec and constant labels, its place among a server's databases,
and its parts, each owned by its own module:

    connections.py  its sessions, one lock each, and its reachability
    results.py      per query: the latest run's status and rendered text, what the next run needs
    skips.py        the queries skipped on it and why

TargetState ties them to the target's name and labels; the runner and discovery work through it.
"""
from __future__ import annotations

from typing import Any, Sequence

from exporter.config import QuerySpec, TargetSpec
from exporter.logs import loggable
from exporter.scrape.connections import Connections
from exporter.scrape.exposition import label_text
from exporter.scrape.picks import Picked
from exporter.scrape.render import Histogram
from exporter.scrape.results import ERROR_REASONS, ROW_PROBLEM_REASONS, Fetched, QueryResults, QueryStatus, masked_rows
from exporter.scrape.session import ServerFacts, Session
from exporter.scrape.skips import Skips

__all__ = ["ERROR_REASONS", "ROW_PROBLEM_REASONS", "Fetched", "QueryStatus", "TargetState", "masked_rows"]


class TargetState:
    """Sessions, reachability, skips and per-query results of one target."""

    def __init__(self, spec: TargetSpec, queries: Sequence[QuerySpec], sessions: Sequence[Session]) -> None:
        self.spec = spec
        self.log_name = loggable(spec.name)  # the name as it goes into log lines
        self.connections = Connections(sessions, self.log_name)
        self.results = QueryResults(queries, self.log_name)
        self.skips = Skips(self.log_name)
        # A discovered database's series carry `datname` too, except those of queries that label rows
        # with their own datname column, and cluster-wide ones (they speak for the whole server).
        self.row_label_text = label_text([("target", spec.configured_name), *spec.labels])
        self.label_text = self.row_label_text if spec.datname is None else label_text(
            [("target", spec.configured_name), ("datname", spec.datname), *spec.labels])
        # Set by discovery for its databases: only the DSN's database runs the cluster-wide queries,
        # and when the patterns leave it out, it runs nothing else.
        self.runs_cluster_queries = True
        self.runs_database_queries = True
        self.removed = False  # a discovered database that is gone (dropped, excluded): no longer reported

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def discovered_database(self) -> bool:
        """A database of a discovery root other than the DSN's: visited in turn (visits.py), its scrape
        serves what its last visit left (freshness.py)."""
        return self.spec.parent is not None and not self.runs_cluster_queries

    def rows_labelled(self, query: QuerySpec) -> str:
        """The constant labels of a query's series on this target."""
        if query.scope == "cluster" or "datname" in query.labels:
            return self.row_label_text
        return self.label_text

    # -- the parts, by the names the rest of pgvigil reads them ---------------------
    @property
    def facts(self) -> ServerFacts | None:
        return self.connections.facts

    @property
    def up(self) -> bool | None:
        return self.connections.up

    @property
    def error(self) -> str | None:
        return self.connections.error

    @property
    def sessions(self) -> list[Session]:
        return self.connections.sessions

    @property
    def session_locks(self) -> list[Any]:
        return self.connections.locks

    @property
    def close_when_idle(self) -> bool:
        return self.connections.close_when_idle

    @close_when_idle.setter
    def close_when_idle(self, value: bool) -> None:
        self.connections.close_when_idle = value

    @property
    def statuses(self) -> dict[str, QueryStatus]:
        return self.results.statuses

    @property
    def histograms(self) -> dict[str, dict[str, dict[tuple[Any, ...], Histogram]]]:
        return self.results.histograms

    @property
    def previous_run(self) -> dict[str, str]:
        return self.results.previous_run

    @property
    def picks(self) -> dict[tuple[str, int], Picked]:
        return self.results.picks

    @property
    def skipped(self) -> dict[str, str]:
        """Queries the role may not run here (capability.py), by name, with the refusal's reason."""
        return self.skips.refused

    # -- what runs record ------------------------------------------------------------
    def due(self, query: QuerySpec) -> bool:
        return self.results.due(query)

    def record_rows(self, query: QuerySpec, run_id: int, fetched: Fetched) -> None:
        self.results.record_rows(query, run_id, fetched, self.rows_labelled(query))

    def record_failure(self, query: QuerySpec, run_id: int, reason: str, message: str, start: float) -> None:
        self.results.record_failure(query, run_id, reason, message, start)

    def record_reuse(self, query: QuerySpec, run_id: int) -> None:
        self.results.record_reuse(query, run_id)

    # -- what capability.probe records -------------------------------------------------
    def probe_due(self, refresh: float) -> bool:
        return self.skips.probe_due(refresh)

    def mark_probed(self) -> None:
        self.skips.mark_probed()

    def skip(self, query: QuerySpec, reason: str, message: str) -> None:
        """The role cannot run this query here: skipped (logged once), its old result and status dropped."""
        self.skips.refuse(query, reason, message)
        self.results.forget(query)

    def unskip(self, query: QuerySpec) -> None:
        self.skips.allow(query)

    # -- sessions ----------------------------------------------------------------------
    def release_idle(self) -> None:
        self.connections.release_idle()

    def close(self) -> None:
        self.connections.close()
