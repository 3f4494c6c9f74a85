"""What one scrape saw: each (target, query) it asked for and the discovery roots it consulted.

Apart from state.py so that the per-target state need not know about discovery, which builds on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from exporter.config import QuerySpec
from exporter.scrape.discovery import Discovery
from exporter.scrape.sampler import Sampler
from exporter.scrape.state import QueryStatus, TargetState


@dataclass
class QueryOutcome:
    """One (target, query) as seen by one scrape."""

    target: TargetState
    query: QuerySpec
    status: QueryStatus
    included: bool
    timed_out: bool


@dataclass
class Scrape:
    """What one scrape saw: each eligible (target, query), the targets asked, and its duration."""

    outcomes: list[QueryOutcome]
    targets: list[TargetState]
    duration: float
    discovery: list[Discovery] = field(default_factory=list)  # the discovery roots this scrape asked
    # By root: databases monitored but never reached yet (no series at all, never reported down).
    not_yet_scraped: dict[str, int] = field(default_factory=dict)
    samplers: list[Sampler] = field(default_factory=list)  # the servers' samplers this scrape shows
