"""Vector search: a pgvector index nobody uses while its table is read, searches slowing down."""
from __future__ import annotations

from exporter.bundle.catalog.spec import (
    APP_TABLE,
    BASE,
    AlertSpec,
    Case,
    Scenario,
    ValueKind,
    counter,
    number,
    selector,
)

GROUP = "pgvigil-vector"


def _vector_index_idle(case: Case) -> Scenario:
    index = {**BASE, **APP_TABLE, "relname": "documents", "indexrelname": "documents_embedding_idx", "method": "hnsw"}
    table = {**BASE, **APP_TABLE, "relname": "documents"}
    reads = 0 if case.quiet else 10
    series = {
        selector("pg_vector_index_scans_total", index): counter(case.value / 60, case.minutes),
        selector("pg_stat_user_tables_seq_scan", table): counter(reads, case.minutes),
        selector("pg_stat_user_tables_idx_scan", table): counter(reads, case.minutes),
    }
    return Scenario(series, case.value, index)


DAY = 1440  # minutes
SLOWDOWN_WINDOW = 30


def _vector_search_slowdown(case: Case) -> Scenario:
    """A day of searches at one mean time, then at `value` of that speed (mean time / value); the
    traffic stays the same (under the threshold's floor in the quiet case). The series start
    SLOWDOWN_WINDOW minutes late so that a day later the comparison exists only from the minute
    the last 30 minutes are all slow: the condition cannot hold before `starts_at`."""
    labels = {**BASE, "datname": "app"}
    calls = case.min_rate * 60 / 2 if case.quiet else max(case.min_rate, 1) * 60
    before = calls * 0.02  # 20 ms a search
    after = before / case.value
    late = f"_x{SLOWDOWN_WINDOW}"
    head = DAY - SLOWDOWN_WINDOW  # steps of the first day, from minute SLOWDOWN_WINDOW to DAY
    rest = case.minutes - DAY - 1
    seconds = f"{late} 0+{number(before)}x{head} {number(before * head + after)}+{number(after)}x{rest}"
    series = {
        selector("pg_vector_search_calls_total", labels): f"{late} 0+{number(calls)}x{case.minutes - SLOWDOWN_WINDOW}",
        selector("pg_vector_search_seconds_total", labels): seconds,
    }
    return Scenario(series, case.value, labels)


ALERTS = (
    AlertSpec(
        name="PostgresVectorIndexUnused",
        threshold="vector_index_idle",
        group=GROUP,
        value_expr="increase(pg_vector_index_scans_total[1h])",
        summary="A vector index is not used while its table is queried",
        description="Vector index {indexrelname} on {schemaname}.{relname} in database {datname} on {target} "
                    "was scanned {value} times in the last hour while the table was read (alert below {level}).",
        scenario=_vector_index_idle,
        guard=(
            "and ignoring(indexrelname, method) (increase(pg_stat_user_tables_seq_scan[1h])"
            " + increase(pg_stat_user_tables_idx_scan[1h])) > 0"
            " and (pg_vector_index_scans_total offset 1h)"
        ),
        whole_value=True,
        kind=ValueKind.RATE,
        window=60,
        starts_at=60,
        has_quiet_case=True,
    ),
    # PostgreSQL exposes no recall or graph quality: searches getting slower against the same
    # window a day earlier (same time of day) is the efficiency signal. Speed, not
    # slowdown, so the value is a ratio in (0, 1] when things get worse, like the other ratios.
    AlertSpec(
        name="PostgresVectorIndexEfficiencyDegraded",
        threshold="vector_search_slowdown",
        group=GROUP,
        value_expr=(
            "(rate(pg_vector_search_seconds_total[30m] offset 1d)"
            " / rate(pg_vector_search_calls_total[30m] offset 1d))"
            " / (rate(pg_vector_search_seconds_total[30m]) / rate(pg_vector_search_calls_total[30m]))"
        ),
        summary="Vector similarity searches are slower than a day ago",
        description="Similarity searches in database {datname} on {target} run at {value} of their speed "
                    "a day earlier (mean time then / mean time now; alert below {level}).",
        scenario=_vector_search_slowdown,
        guard="and rate(pg_vector_search_calls_total[30m]) > {min_rate}",
        kind=ValueKind.RATE,
        window=DAY + SLOWDOWN_WINDOW + 1,
        starts_at=DAY + SLOWDOWN_WINDOW + 1,
        has_quiet_case=True,
    ),
)
