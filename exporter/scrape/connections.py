"""A target's sessions, one lock each, and its reachability as the last connect or check left it.

Reachability is state, not a question asked on demand: runs set it when they connect, and /health
reads it (runner.health starts a check in the background, never connecting in the request's thread).
`up` is None until the target was first reached or refused: "not yet scraped", never "down".
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

from exporter.logs import loggable
from exporter.scrape.budget import NoConnectionSlot
from exporter.scrape.session import ConnectFailed, QueryFailed, ServerFacts, Session

log = logging.getLogger(__name__)


class Connections:
    """The sessions of one target and whether it could be reached; `target` is its name for log lines."""

    def __init__(self, sessions: Sequence[Session], target: str) -> None:
        self.sessions = list(sessions)
        self.locks = [threading.Lock() for _ in self.sessions]
        self.target = target
        self.up: bool | None = None
        self.error: str | None = None
        self.rtt: float | None = None  # seconds, of the latest check (SELECT 1)
        self.close_when_idle = False  # set by discovery when the server's databases outnumber its connection budget
        self.extensions_checked = float("-inf")
        self.last_facts: ServerFacts | None = None

    @property
    def facts(self) -> ServerFacts | None:
        # While the session reconnects (after a stall or a killed backend) the last known facts
        # stand in, so the target's queries report as failed in that scrape instead of vanishing.
        facts = self.sessions[0].facts
        if facts is not None:
            self.last_facts = facts
        return facts or self.last_facts

    def connect(self, index: int, extension_refresh: float) -> Exception | None:
        """Make session `index` usable: None when it is, else why not.

        The first session's success marks the target up; its failure is the caller's to record
        (`mark_down`): a discovered database that cannot be reached may have been dropped. A session
        that found no free slot of its server's connection budget (NoConnectionSlot) tried nothing."""
        session = self.sessions[index]
        with self.locks[index]:
            try:
                session.ensure_connected()
                if index == 0 and time.monotonic() - self.extensions_checked > extension_refresh:
                    session.refresh_extensions()
                    self.extensions_checked = time.monotonic()
            except (ConnectFailed, QueryFailed) as exc:
                return exc
        if index == 0:
            self.mark_up()
        return None

    def mark_up(self) -> None:
        if self.up is False:
            log.info("target %s is reachable again", self.target)
        self.up, self.error = True, None

    def mark_down(self, message: str) -> None:
        if self.up is not False or self.error != message:
            log.warning("target %s is unreachable: %s", self.target, loggable(message))
        self.up, self.error = False, message

    def check(self, lock_wait: float) -> None:
        """Reachability and round-trip time now, by a SELECT 1 on the first session when it is free
        within `lock_wait` (a run holding it sets reachability itself)."""
        lock = self.locks[0]
        if not lock.acquire(timeout=lock_wait):
            return
        try:
            self.rtt = self.sessions[0].ping()
            self.mark_up()
        except NoConnectionSlot:
            pass  # the server's budget is busy: nothing was asked of it
        except (ConnectFailed, QueryFailed) as exc:
            self.mark_down(str(exc))
        finally:
            lock.release()
        self.release_idle()

    def report(self) -> dict[str, Any]:
        """For /health: up (None: not yet reached), the latest round-trip time while up, the error while down."""
        return {"up": self.up, "rtt_seconds": self.rtt if self.up else None, "error": self.error}

    def release_idle(self) -> None:
        """After a run or a check: close the sessions when discovery asks idle ones to be closed."""
        if self.close_when_idle:
            for lock, session in zip(self.locks, self.sessions):
                with lock:
                    session.close()

    def close(self) -> None:
        """Close every session; a running query is cancelled rather than waited for."""
        for lock, session in zip(self.locks, self.sessions):
            if not lock.acquire(timeout=0.2):
                session.cancel()
                if not lock.acquire(timeout=5):
                    session.close()
                    continue
            try:
                session.close()
            finally:
                lock.release()
