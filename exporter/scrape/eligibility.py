"""Which configured queries run on which target.

A query is meant for a target when the target is of its kind, among its `targets`, on a server
within its version range, and, for a discovered database, of the scope the database runs (the
DSN's database runs the cluster-wide queries, the others the per-database ones). A cluster-wide
query runs once per server: on its first target that speaks for the server (a configured target,
or a discovery root's DSN database; never a database merely found on it) where the query can run.

Whether it can run is judged where it would run: `requires_extension` against the extensions of
that target's own database. A query meant for a target whose database lacks the extension is
skipped there, visibly (skips.py: self-metric, one log line), never dropped in silence and never
moved to another database that happens to have it. Queries the role may not run (capability.py)
are left out too, unless asked for (`with_skipped`: the ones the capability probe tries again).
"""
from __future__ import annotations

import weakref
from typing import Mapping, NamedTuple, Sequence

from exporter.config import QuerySpec
from exporter.scrape.session import ServerFacts
from exporter.scrape.state import TargetState


class _Memo(NamedTuple):
    """An answer of Eligibility.queries_for, and what it was decided from."""

    facts: ServerFacts
    targets: Mapping[str, TargetState]
    refused: tuple[str, ...]
    queries: list[QuerySpec]


class Eligibility:
    """The queries of one config, decided per target; answers are remembered per target until its
    facts, the target list (which target speaks for a server) or its skips change."""

    def __init__(self, queries: Sequence[QuerySpec]) -> None:
        self.queries = tuple(queries)
        # Per target, one answer with the refused queries and one without (a run asks for both).
        self._memo: weakref.WeakKeyDictionary[TargetState, dict[bool, _Memo]] = weakref.WeakKeyDictionary()

    def queries_for(self, state: TargetState, targets: Mapping[str, TargetState],
                    with_skipped: bool = False) -> list[QuerySpec]:
        """The queries that run on `state` among `targets`; records the ones skipped for an extension."""
        facts = state.facts
        if facts is None:
            return []
        refused = tuple(state.skipped)
        memo = self._memo.setdefault(state, {}).get(with_skipped)
        if memo is not None and memo.facts is facts and memo.targets is targets and memo.refused == refused:
            return memo.queries
        eligible, missing = [], {}
        settled = True
        speakers: list[TargetState] | None = None  # the targets that may run cluster-wide queries, once
        for query in self.queries:
            if not meant_for(query, state, facts):
                continue
            if query.scope == "cluster":
                if speakers is None:
                    speakers = [other for other in targets.values() if other.runs_cluster_queries]
                owns, known = self._owns(query, state, facts, speakers)
                settled = settled and known
                if not owns:
                    continue
            if not has_extension(query, facts):
                missing[query.name] = str(query.requires_extension)
            elif with_skipped or query.name not in state.skipped:
                eligible.append(query)
        state.skips.note_missing_extensions(missing, facts.database)
        if settled:  # else decided again next time: a speaker not connected yet may share this server
            self._memo[state][with_skipped] = _Memo(facts, targets, refused, eligible)
        return eligible

    @staticmethod
    def _owns(query: QuerySpec, state: TargetState, facts: ServerFacts,
              speakers: Sequence[TargetState]) -> tuple[bool, bool]:
        """A cluster-wide query's target on each server: the first speaker for the server (in target order)
        whose database has the extension the query needs, else the first speaker (which reports the skip).
        And whether that is settled: not while a speaker has not connected yet (it may share the server; an
        answer remembered before it did ran the query on two targets of one server for good)."""
        first: TargetState | None = None
        settled = True
        for other in speakers:
            other_facts = other.facts
            if other_facts is None:
                settled = False
                continue
            if other_facts.identity != facts.identity or not meant_for(query, other, other_facts):
                continue
            if has_extension(query, other_facts):
                return other is state, settled
            first = first or other
        return first is None or first is state, settled


def meant_for(query: QuerySpec, state: TargetState, facts: ServerFacts) -> bool:
    """Whether `query` is for this target at all: kind, `targets`, version, and the scope it runs."""
    if query.kind != state.spec.kind:  # postgres packs never run on a PgBouncer console, nor the reverse
        return False
    if query.targets is not None and state.spec.configured_name not in query.targets:
        return False
    if not (state.runs_cluster_queries if query.scope == "cluster" else state.runs_database_queries):
        return False
    return query.runs_on_version(facts.version)


def has_extension(query: QuerySpec, facts: ServerFacts) -> bool:
    """Whether the database these facts are of has the extension the query requires (if any)."""
    return not query.requires_extension or query.requires_extension in facts.extensions
