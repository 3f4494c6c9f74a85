"""Why a query does not run on one target, although it is meant to: skipped, logged once, never an error.

Two reasons: the role may not run it (capability.py probes each query and names the refusal:
permission_denied, missing_relation, ...), or an extension it requires (`requires_extension`) is not
installed in the target's database, the database where it would run (eligibility.py judges that).
Each becomes `pgvigil_query_skipped{target, query, reason}` and one log line when it starts and ends.
"""
from __future__ import annotations

import logging
import time

from exporter.config import QuerySpec
from exporter.logs import loggable

log = logging.getLogger(__name__)

MISSING_EXTENSION = "missing_extension"


class Skips:
    """The queries skipped on one target and why; `target` is its name as it goes into log lines."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.refused: dict[str, str] = {}  # query name -> why the role cannot run it here (capability.py)
        self.missing_extension: dict[str, str] = {}  # query name -> the extension absent from this database
        self.probed_at = float("-inf")  # monotonic: when capability.probe last went through the queries

    def reasons(self) -> dict[str, str]:
        """Every skipped query with its reason (the `reason` label of pgvigil_query_skipped)."""
        return {**self.refused, **dict.fromkeys(self.missing_extension, MISSING_EXTENSION)}

    # -- the role's privileges (capability.py) ---------------------------------
    def probe_due(self, refresh: float) -> bool:
        return time.monotonic() - self.probed_at > refresh

    def mark_probed(self) -> None:
        self.probed_at = time.monotonic()

    def refuse(self, query: QuerySpec, reason: str, message: str) -> None:
        if self.refused.get(query.name) != reason:
            log.info("query %s on target %s is skipped (%s): %s", query.name, self.target, reason, message)
        self.refused[query.name] = reason

    def allow(self, query: QuerySpec) -> None:
        if self.refused.pop(query.name, None) is not None:
            log.info("query %s on target %s can run now", query.name, self.target)

    # -- extensions (eligibility.py) ---------------------------------------------
    def note_missing_extensions(self, missing: dict[str, str], database: str) -> None:
        """The queries (name -> extension) whose extension `database` lacks, as of the target's latest facts."""
        if missing == self.missing_extension:
            return
        for name, extension in missing.items():
            if self.missing_extension.get(name) != extension:
                log.info("query %s on target %s is skipped (%s): extension %s is not installed in database %s",
                         name, self.target, MISSING_EXTENSION, extension, loggable(database))
        for name in self.missing_extension.keys() - missing.keys():
            log.info("query %s on target %s can run now: its extension is installed", name, self.target)
        self.missing_extension = dict(missing)
