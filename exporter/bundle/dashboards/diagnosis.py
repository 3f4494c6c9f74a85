"""Where the time goes: from an alert to its cause, from sessions sampled between scrapes.

Average active sessions (rate() of the sampler's seconds: exporter/scrape/sampler.py) stacked by wait
event, who they are, and the statements they run, with their text when the `statement_texts` pack is
on. docs/diagnosis.md says, alert by alert, which panel answers "why".
"""
from __future__ import annotations

from exporter.bundle.dashboards.blocking_bloat import bloat, blocking
from exporter.bundle.dashboards.panels import TD, PanelBuilder, PanelFn, T
from exporter.bundle.grafana import Dashboard, Panel, Query

WAITS = "pg_wait_sampled_seconds_total"
STATEMENTS = "pg_wait_sampled_statement_seconds_total"
# Sessions doing something: an idle-in-transaction session holds locks but spends no time; it has a panel of its own.
ACTIVE = f'{TD}, state!~"idle in transaction.*"'
IDLE_IN_TRANSACTION = f'{TD}, state=~"idle in transaction.*"'
STATEMENT_BY = "target, datname, queryid"


def aas(by: str, selector: str = ACTIVE) -> str:
    """Average sessions over the rate window, summed by `by`."""
    return f"sum by ({by}) (rate({WAITS}{{{selector}}}[$__rate_interval]))"


def sessions(p: PanelFn) -> tuple[Panel, ...]:
    """Average active sessions: by wait event type, by wait event, by who runs them."""
    return (
        p("Average active sessions by wait event type", "timeseries",
          [Query(aas("target, wait_event_type"), "{{target}} {{wait_event_type}}")], "short",
          "Sessions sampled every sample_interval, averaged: how many were on CPU (active, no wait event) or "
          "waiting, and on what kind of wait. Compare the total with the server's cores.", width=24, height=9,
          minimum=0, stacked=True),
        p("Average active sessions by wait event", "timeseries",
          [Query(aas("target, wait_event_type, wait_event"), "{{target}} {{wait_event_type}}/{{wait_event}}")],
          "short", "The same sessions by wait event: Lock/transactionid waits on a row another transaction "
          "holds, LWLock/WALWrite on WAL writes, IO/DataFileRead on reads ...", minimum=0, stacked=True),
        p("Average active sessions by database, user and application", "timeseries",
          [Query(f"topk(10, {aas('target, datname, usename, application_name')})",
                 "{{target}} {{datname}} {{usename}} {{application_name}}")], "short",
          "Who the active sessions are (the top 10); `other` holds the label sets past the sampler's sample_top.",
          minimum=0),
        p("Sessions idle in transaction (sampled)", "timeseries",
          [Query(aas("target, datname, usename, application_name", IDLE_IN_TRANSACTION),
                 "{{target}} {{datname}} {{usename}} {{application_name}}")], "short",
          "Sessions holding a transaction open while doing nothing, averaged: they hold their locks and stop "
          "vacuum from removing dead rows.", minimum=0),
    )


def statements(p: PanelFn) -> tuple[Panel, ...]:
    """Statements by sampled time, their text when statement_texts is on, and their dominant waits."""
    by_time = f"sum by ({STATEMENT_BY}) (increase({STATEMENTS}{{{TD}}}[$__range]))"
    # The statement's text joined from statement_texts' info series when it is there, else the queryid alone.
    texts = f"max by ({STATEMENT_BY}, query) (pg_stat_statements_query_info{{{TD}}})"
    with_text = f"topk(10, {by_time} * on ({STATEMENT_BY}) group_left(query) {texts}) or topk(10, {by_time})"
    return (
        p("Top statements by sampled time", "table", [Query(with_text, "{{datname}} {{queryid}}")], "s",
          "Seconds of active sessions sampled running each statement (queryid, PostgreSQL 14+ with "
          "compute_query_id) in the selected range, with its text when the statement_texts pack is on.",
          width=24, height=9),
        p("Their dominant waits", "table", [Query(
            f"topk(20, sum by ({STATEMENT_BY}, wait_event_type, wait_event) "
            f"(increase({STATEMENTS}{{{TD}}}[$__range])))", "{{queryid}} {{wait_event_type}}/{{wait_event}}")],
          "s", "What the top statements spent their sampled time on (CPU: running, not waiting).", height=9),
        p("Statement time per second, by statement", "timeseries", [Query(
            f"topk(10, sum by ({STATEMENT_BY}) (rate({STATEMENTS}{{{TD}}}[$__rate_interval])))",
            "{{datname}} {{queryid}}")], "short", "Average active sessions running each top statement.",
          height=9, minimum=0),
    )


def sampler(p: PanelFn) -> tuple[Panel, ...]:
    """Whether the samples can be trusted: taken, and skipped because one overran."""
    return (
        p("Sampler: samples and skipped per second", "timeseries", [
            Query(f"sum by (target) (rate(pgvigil_sampler_samples_total{{{T}}}[$__rate_interval]))",
                  "{{target}} samples"),
            Query(f"sum by (target) (rate(pgvigil_sampler_skipped_total{{{T}}}[$__rate_interval]))",
                  "{{target}} skipped"),
        ], "short", "Samples per second (1 at the default sample_interval) and ticks skipped because a "
                    "sample overran: skipped samples make the averages above read low.", minimum=0),
        p("Sampler: own time per second", "timeseries", [Query(
            f"sum by (target) (rate(pgvigil_sampler_seconds_total{{{T}}}[$__rate_interval]))", "{{target}}")],
          "s", "Wall-clock seconds the sampler spends per second taking samples (round trip included).",
          minimum=0),
    )


def dashboard(builder: PanelBuilder) -> Dashboard:
    """The dashboard: where the time goes, who blocks whom, what bloats (the last two also sit on the
    overview and storage dashboards), and the sampler's own health."""
    p = builder.panel
    panels = sessions(p) + statements(p) + blocking(p) + bloat(p) + sampler(p)
    return Dashboard("pgvigil-diagnosis", "PostgreSQL: Where the time goes",
                     "From an alert to its cause: average active sessions by wait event, who they are, the "
                     "statements they run (sampled between scrapes), who blocks whom, what bloats.",
                     panels, ("target", "datname"))
