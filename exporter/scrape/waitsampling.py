"""The sampler's second source: pg_wait_sampling's profile, read instead of polling pg_stat_activity.

Where the pg_wait_sampling extension is installed (and preloaded), its collector samples every backend's
wait event every `pg_wait_sampling.profile_period` ms (10 by default) and keeps a cumulative count per
(pid, event_type, event, queryid): a hundred samples a second instead of pgvigil's one. The sampler
(sampler.py) reads the profile every `sample_interval` and turns it into the same counters as polling:

- the difference of each count since the previous read × profile_period is seconds, attributed to the
  labels of its pid from pg_stat_activity read in the same statement (one round trip, one snapshot);
  a pid gone since keeps the labels of the previous read, or reads `unknown`;
- the profile has no session state, so the polling sampler's filter is applied here through the read's
  state: background processes idling in their main loop (event type Activity) are left out, and so is
  `Client/ClientRead` of a session idle at the read (pg_wait_sampling 1.1 samples idle backends too),
  or whose state is unknown; a session idle at the read spent the rest of its interval's counts while
  active (it was not idle when it waited on anything else);
- CPU is a backend with no wait event. The profile counts it only where the collector samples it
  (`pg_wait_sampling.sample_cpu`, 1.1.5 and later); older collectors (Debian's 1.1.4) skip such
  backends, so CPU then comes from the same statement's pg_stat_activity, as the polling sampler
  counts it (active sessions with no wait event, `sample_interval` each);
- the first read, a reset of the profile (pg_wait_sampling_reset_profile(): counts going down or
  entries gone; the collector otherwise keeps every pid's entries) start again from that read: no
  increment is ever negative, the interval of a reset is not counted.

The profile's names are qualified with the extension's schema from pg_extension (ServerFacts), never
resolved through search_path. Whether the role may read it is asked of the catalog at each connect.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from exporter.scrape.session import PreparedSql, Session
from exporter.scrape.transaction import quote_identifier
from exporter.scrape.waitprofile import bounded

EXTENSION = "pg_wait_sampling"
POLLING = "pg_stat_activity"  # the source label of the polling sampler
UNKNOWN = "unknown"
CPU = "CPU"
INSUFFICIENT = "'<insufficient privilege>'"
# profile_period as the server says it, in ms (a hostile or odd setting outside this: the profile is not used).
MIN_PERIOD_MS, MAX_PERIOD_MS = 1, 60000

# At connect: whether the role may read the profile (schema, view and the function behind it) and the
# collector's settings (NULL: the library is not preloaded, so nothing collects).
PROBE_SQL = (
    "SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE')"
    " AND pg_catalog.has_table_privilege(c.oid, 'SELECT')"
    " AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE') AS readable,"
    " pg_catalog.current_setting('pg_wait_sampling.profile_period', true) AS period,"
    " pg_catalog.current_setting('pg_wait_sampling.profile_pid', true) AS per_pid"
    " FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace"
    " JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid"
    " AND c.relname OPERATOR(pg_catalog.=) 'pg_wait_sampling_profile'"
    " JOIN pg_catalog.pg_proc p ON p.pronamespace OPERATOR(pg_catalog.=) n.oid"
    " AND p.proname OPERATOR(pg_catalog.=) 'pg_wait_sampling_get_profile'"
    " WHERE e.extname OPERATOR(pg_catalog.=) 'pg_wait_sampling'")

# Read with each profile, in the same round trip: the settings may change on reload (SIGHUP).
SETTINGS_SQL = ("SELECT ARRAY[pg_catalog.current_setting('pg_wait_sampling.profile_period', true),"
                " pg_catalog.current_setting('pg_wait_sampling.sample_cpu', true)]")

_LABELS = ("a.datname::pg_catalog.text AS datname, a.usename::pg_catalog.text AS usename,"
           " a.application_name, a.backend_type, a.state")


def profile_grants(session: Session, grantee: str, timeout: float, lock_timeout: float) -> tuple[list[str], list[str]]:
    """`pgvigil grants`: what the role misses to read pg_wait_sampling's profile here, and the GRANTs."""
    rows = session.run(PreparedSql(grants_sql()), timeout=timeout, lock_timeout=lock_timeout).rows
    if not rows:
        return [], []
    return ([f"{EXTENSION}'s profile (the sampler polls pg_stat_activity instead)"],
            [f"{row[0]}{grantee};" for row in rows])


def grants_sql() -> str:
    """The GRANT prefixes (the grantee is appended) the role needs to read the profile; no rows: none."""
    joins = PROBE_SQL[PROBE_SQL.index(" FROM"):]
    return ("SELECT g.s FROM (SELECT 1 AS o, pg_catalog.format('GRANT USAGE ON SCHEMA %I TO ', n.nspname) AS s,"
            " pg_catalog.has_schema_privilege(n.oid, 'USAGE') AS ok" + joins +
            " UNION ALL SELECT 2, pg_catalog.format('GRANT SELECT ON %I.%I TO ', n.nspname, c.relname),"
            " pg_catalog.has_table_privilege(c.oid, 'SELECT')" + joins +
            " UNION ALL SELECT 3,"
            " pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO ', p.oid::pg_catalog.regprocedure),"
            " pg_catalog.has_function_privilege(p.oid, 'EXECUTE')" + joins +
            ") AS g WHERE NOT g.ok ORDER BY g.o")


def read_sql(schema: str, version: int) -> str:
    """One read: every profile entry with its pid's labels now, then the sessions on CPU now (used when
    the collector does not sample CPU). One statement: one snapshot of pg_stat_activity."""
    queryid = ("CASE WHEN a.state OPERATOR(pg_catalog.=) 'active' AND a.query_id OPERATOR(pg_catalog.<>) 0"
               " THEN a.query_id::pg_catalog.text END" if version >= 140000 else "NULL::pg_catalog.text")
    return ("SELECT 'profile' AS kind, p.pid, p.event_type, p.event, p.queryid::pg_catalog.text AS queryid,"
            " p.count, a.pid IS NOT NULL AS present,"
            " (p.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()"
            f" OR a.query IS NOT DISTINCT FROM {INSUFFICIENT}) AS hidden, {_LABELS}"
            f" FROM {quote_identifier(schema)}.pg_wait_sampling_profile p"
            " LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) p.pid"
            " UNION ALL"
            f" SELECT 'cpu', a.pid, NULL, NULL, {queryid}, 1, true, false, {_LABELS}"
            " FROM pg_catalog.pg_stat_activity a"
            " WHERE a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() AND a.wait_event_type IS NULL"
            " AND a.state IS DISTINCT FROM 'idle'"
            f" AND a.query IS DISTINCT FROM {INSUFFICIENT}")


def period_seconds(value: object) -> float | None:
    """profile_period (ms, as the server says it) in seconds; None when absent or out of bounds."""
    try:
        ms = int(str(value))
    except ValueError:
        return None
    return ms / 1000.0 if MIN_PERIOD_MS <= ms <= MAX_PERIOD_MS else None


def unusable(row: Sequence[Any] | None) -> str | None:
    """Why the profile cannot be read, from PROBE_SQL's row (None: it can)."""
    if row is None:
        return "the extension's profile view is missing"
    readable, period, per_pid = row
    if not readable:
        return "the role may not read its profile (`pgvigil grants` prints the grant)"
    if period is None:
        return "the library is not in shared_preload_libraries, so nothing collects"
    if period_seconds(period) is None:
        return "its profile_period is not a number of ms between 1 and 60000"
    if str(per_pid).lower() not in ("on", "true", "1"):
        return "pg_wait_sampling.profile_pid is off (the profile has no pid to label)"
    return None


@dataclass(frozen=True)
class Labels:
    """A pid's labels at a read; `hidden`: the sampler's own session, or one the role may not see."""

    datname: str
    usename: str
    application_name: str
    backend_type: str
    state: str
    hidden: bool = False


_LABEL_NAMES = ("datname", "usename", "application_name", "backend_type", "state")
UNKNOWN_LABELS = Labels(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
Key = tuple[int, str | None, str | None, str | None]  # pid, event_type, event, queryid
Seconds = dict[tuple[str, ...], float]


# How far the calibrated seconds per count may stray from profile_period (a read delayed on our side, a
# collector stalled): beyond, the bound is used.
CALIBRATION_BOUNDS = (0.5, 2.0)


def per_count(counts: dict[Key, int], previous: dict[Key, int], period: float, elapsed: float | None) -> float:
    """Seconds one count stands for in this interval.

    The collector sleeps profile_period between two samples, then samples: each sample comes a little
    later than the period (its own time, the wake-up's lateness, more on a busy server), so counts ×
    period reads low (by 2 to 8 % measured on a busy 2-core machine). The samples taken in the interval
    are the counts gained by a process sampled at each of them: the most any pid present at both reads
    gained (a background process always waiting; pg_wait_sampling 1.1.4 skips a backend on CPU, so not
    that one). The interval's wall time over that many samples is what one sample stood for."""
    if not elapsed or elapsed <= 0:
        return period
    pids = {key[0] for key in previous}
    gained: dict[int, int] = {}
    for key, count in counts.items():
        if key[0] in pids:
            gained[key[0]] = gained.get(key[0], 0) + count - previous.get(key, 0)
    samples = max(gained.values(), default=0)
    if samples <= 0:
        return period
    low, high = CALIBRATION_BOUNDS
    return min(max(elapsed / samples, period * low), period * high)


class ProfileDelta:
    """The profile's counts at the previous read, and the labels of its pids then."""

    def __init__(self) -> None:
        self.previous: dict[Key, int] | None = None
        self.labels: dict[int, Labels] = {}
        self.resets = 0  # reads that found the profile reset (counts went down or entries went away)
        self.previous_at: float | None = None

    def restart(self) -> None:
        """Forget the previous read (a new connection, a read that failed): the next read is a baseline."""
        self.previous = None
        self.labels = {}
        self.previous_at = None

    def read(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], period: float, cpu_in_profile: bool,
             interval: float, at: float | None = None) -> tuple[Seconds, Seconds] | None:
        """Seconds by wait label set and by statement since the previous read; None: this read is a new
        start (the first, or the profile was reset), nothing is counted. `at`: when the read was sent
        (monotonic seconds), to calibrate a count against the collector's real pace (per_count)."""
        index = {name: i for i, name in enumerate(columns)}
        counts: dict[Key, int] = {}
        now: dict[int, Labels] = {}
        on_cpu: list[tuple[Labels, str | None]] = []
        for row in rows:
            datname, usename, application, backend, state = (bounded(row[index[name]]) for name in _LABEL_NAMES)
            labels = Labels(datname, usename, application, backend, state, hidden=bool(row[index["hidden"]]))
            queryid = row[index["queryid"]]
            if row[index["kind"]] == "cpu":
                on_cpu.append((labels, queryid))
                continue
            pid = int(row[index["pid"]])
            key = (pid, row[index["event_type"]], row[index["event"]], queryid)
            counts[key] = counts.get(key, 0) + int(row[index["count"]] or 0)
            if row[index["present"]]:
                now[pid] = labels
        previous, before, previous_at = self.previous, self.labels, self.previous_at
        self.previous, self.labels, self.previous_at = counts, now, at
        if previous is None:
            return None
        if any(counts.get(key, -1) < count for key, count in previous.items()):
            self.resets += 1
            return None
        period = per_count(counts, previous, period, None if at is None or previous_at is None else at - previous_at)
        waits: Seconds = {}
        statements: Seconds = {}
        for key, count in counts.items():
            delta = count - previous.get(key, 0)
            if delta <= 0:
                continue
            pid, event_type, event, queryid = key
            labels = now.get(pid) or before.get(pid) or UNKNOWN_LABELS
            if labels.hidden or event_type == "Activity":  # a background process idling in its main loop
                continue
            if event_type is None and event is None:
                if not cpu_in_profile:
                    continue
                event_type = event = CPU
            state = labels.state
            if event_type == "Client" and event == "ClientRead" and state in ("idle", UNKNOWN):
                continue  # an idle session waiting for its client's next query: not time spent on anything
            if state == "idle":
                state = "active"  # its other counts were taken while it worked, between the reads
            self._add(waits, statements, labels, state, bounded(event_type), bounded(event),
                      queryid if state == "active" else None, delta * period)
        if not cpu_in_profile:
            for labels, queryid in on_cpu:
                self._add(waits, statements, labels, labels.state, CPU, CPU, queryid, interval)
        return waits, statements

    @staticmethod
    def _add(waits: Seconds, statements: Seconds, labels: Labels, state: str, event_type: str, event: str,
             queryid: str | None, seconds: float) -> None:
        key = (labels.datname, labels.usename, labels.application_name, labels.backend_type, state, event_type, event)
        waits[key] = waits.get(key, 0.0) + seconds
        if queryid is not None and queryid not in ("0", ""):
            statement = (labels.datname, bounded(queryid), event_type, event)
            statements[statement] = statements.get(statement, 0.0) + seconds
