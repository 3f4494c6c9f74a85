"""Result fuzzing: whatever PostgreSQL returns, the exposition parses back, with prometheus_client and promtool.

Label values with quotes, backslashes, newlines and any unicode; NaN, +/-Inf, huge and tiny numbers;
every numeric PostgreSQL type; more rows than max_series. Values come from a real server, through
the real driver, into the real renderer.
"""
from __future__ import annotations

import datetime as dt
import math
import subprocess

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.types.datetime import TimestampLoader, TimestamptzLoader

from exporter.config import parse_config
from exporter.scrape.assembly import ScrapeText, scrape_once
from exporter.scrape.runner import Runner
from exporter.scrape.selfmetrics import render_self_metrics

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

# PostgreSQL text holds any Unicode scalar value except NUL.
label_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)
tricky_labels = st.one_of(label_text, st.sampled_from([
    '"', "\\", "\n", "\\n", '\\"', '"}', "a=\"b\",c=\"d", "\r\n", "\t", " ", "", "#", "# HELP x y",
    "\u2028", "\ufeff", "🐘🐘", "é" * 200, "le", "+Inf", "NaN", "} 1\nfake_metric 1",
]))
float_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([
    0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308,
    1e-7, 123456789.0, 1234567.0, 1e21, 0.1, 1 / 3]))


def literal(value: object) -> str:
    if isinstance(value, str):  # as hex, so the SQL stays ASCII through YAML (which folds NEL, U+2028...)
        return f"convert_from(decode('{value.encode().hex()}', 'hex'), 'UTF8')"
    return sql.Literal(value).as_string(None)


def config_with(dsn: str, sql: str, labels: list[str], metrics: dict, **query: object):
    document = {"collectors": [], "targets": {"db": {"dsn": dsn, "labels": {"site": 'a"b\\c\nd'}}},
                "queries": [{"name": "fz", "sql": sql, "labels": labels, "metrics": metrics, **query}]}
    return parse_config(yaml.safe_dump(document, allow_unicode=True), source="fuzz.yaml")


def promtool_check(text: str) -> None:
    """promtool parses the text: exit 0, or 3 for lint advice (user metric names), never a parse error."""
    result = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode in (0, 3), output
    assert "error while linting" not in output, output


def parsed(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@FUZZ
@given(rows=st.lists(st.tuples(tricky_labels, float_values), min_size=1, max_size=8, unique_by=lambda r: r[0]))
def test_label_values_and_floats_round_trip(cluster, rows):
    values = ", ".join(f"({literal(label)}::text, {literal(value)}::float8)" for label, value in rows)
    config = config_with(cluster.dsn(), f"SELECT * FROM (VALUES {values}) AS v(name, value)", ["name"],
                         {"value": {"type": "gauge", "help": 'help with "quotes", \\ and \n newline'}})
    text = scrape_once(config)
    samples = parsed(text)
    for label, value in rows:
        key = ("fz_value", (("name", label), ("site", 'a"b\\c\nd'), ("target", "db")))
        assert key in samples, f"{label!r} missing from\n{text}"
        assert same_number(samples[key], value)
    promtool_check(text)


# Every numeric PostgreSQL type (and those pgvigil converts to numbers) at its edges.
NUMERIC_TYPES = {
    "smallint": ("smallint", ["-32768", "0", "32767"]),
    "integer": ("integer", ["-2147483648", "2147483647"]),
    "bigint": ("bigint", ["-9223372036854775808", "9223372036854775807"]),
    "numeric": ("numeric", ["0.1", "-1e-1000", "123456789012345678901234567890.123456789", "1e1000", "-1e1000",
                            "NaN", "Infinity", "-Infinity"]),
    "numeric_scaled": ("numeric(10,4)", ["-999999.9999", "0.0001"]),
    "real": ("real", ["1.17549435e-38", "3.4028235e38", "NaN", "Infinity", "-Infinity", "-0"]),
    "double": ("double precision", ["5e-324", "1.7976931348623157e308", "NaN", "Infinity", "-Infinity"]),
    "oid": ("oid", ["0", "4294967295"]),
    "boolean": ("boolean", ["true", "false"]),
    "interval": ("interval", ["1 day 2 hours", "-3 seconds", "100 years", "0.000001 seconds"]),
    # '-infinity' is read as 0001-01-01 00:00 exactly (datetime.min): that one instant exports as -Inf, so not tested
    "timestamptz": ("timestamptz", ["2024-01-01 00:00:00+00", "1970-01-01 00:00:00+00", "0001-01-01 00:00:01+00",
                                    "infinity", "-infinity"]),
    "timestamp": ("timestamp", ["2024-06-30 12:00:00.5"]),
    "date": ("date", ["2024-02-29", "1900-01-01"]),
}


@pytest.mark.parametrize("sql_type, values", NUMERIC_TYPES.values(), ids=NUMERIC_TYPES.keys())
@pytest.mark.parametrize("metric_type", ["gauge", "counter"])
def test_every_numeric_type_renders_and_parses(cluster, sql_type, values, metric_type):
    rows = ", ".join(f"({i}, {literal(v)}::{sql_type})" for i, v in enumerate(values))
    config = config_with(cluster.dsn(), f"SELECT * FROM (VALUES {rows}) AS v(i, value)", ["i"],
                         {"value": {"type": metric_type}})
    text = scrape_once(config)
    samples = parsed(text)
    got = {dict(labels)["i"]: value for (name, labels), value in samples.items() if name.startswith("fz_value")}
    assert sorted(got) == [str(i) for i in range(len(values))], text  # every value became a sample
    with psycopg.connect(cluster.dsn()) as conn:
        conn.adapters.register_loader("timestamptz", InfiniteTimestamptzLoader)
        conn.adapters.register_loader("timestamp", InfiniteTimestampLoader)
        read = conn.execute(f"SELECT value FROM (VALUES {rows}) AS v(i, value) ORDER BY i").fetchall()
    expected = [_as_float(r[0]) for r in read]
    for i, value in enumerate(expected):
        assert same_number(got[str(i)], value) or math.isclose(got[str(i)], value, rel_tol=1e-15)
    promtool_check(text)


@pytest.mark.parametrize("sql", ["SELECT '294276-12-31 23:59:59+00'::timestamptz AS value",
                                 "SELECT '178000000 years'::interval AS value"], ids=["year-294276", "huge-interval"])
def test_values_the_driver_cannot_represent_cost_their_row_counted(cluster, sql):
    """A value the driver cannot read costs its row alone, counted as invalid_value (scrape/rows.py): never
    the query, never the session."""
    config = parse_config(yaml.safe_dump({
        "collectors": [], "targets": {"db": cluster.dsn()},
        "queries": [{"name": "bad", "sql": sql, "metrics": {"value": {}}},
                    {"name": "after", "sql": "SELECT 1 AS value", "metrics": {"value": {}}}]}))
    runner = Runner(config)
    try:
        for run in (1, 2):  # the session survives: the next run works the same way
            scrape = runner.scrape(30)
            samples = parsed(ScrapeText(runner.config.queries).text(scrape) + render_self_metrics(scrape))
            assert ("bad_value", (("target", "db"),)) not in samples
            invalid = ("pgvigil_query_errors_total", (("query", "bad"), ("reason", "invalid_value"), ("target", "db")))
            assert samples[invalid] == run
            assert samples[("pgvigil_query_success", (("query", "after"), ("target", "db")))] == 1
            assert samples[("after_value", (("target", "db"),))] == 1
        assert cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgvigil' "
                               "AND state LIKE 'idle in transaction%'") == [(0,)]
    finally:
        runner.close()


class InfiniteTimestamptzLoader(TimestamptzLoader):
    """'infinity' / '-infinity' as datetime.max / datetime.min, where psycopg's own loader raises DataError."""

    def load(self, data):
        return _infinite(data) or super().load(data)


class InfiniteTimestampLoader(TimestampLoader):
    def load(self, data):
        return _infinite(data) or super().load(data)


def _infinite(data) -> dt.datetime | None:
    return {b"infinity": dt.datetime.max, b"-infinity": dt.datetime.min}.get(bytes(data))


def _as_float(value: object) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dt.datetime):
        # the test's loaders read 'infinity' / '-infinity' as datetime.max / datetime.min: they mean +Inf / -Inf
        naive = value.replace(tzinfo=None)
        if naive in (dt.datetime.max, dt.datetime.min):
            return float("inf") if naive == dt.datetime.max else float("-inf")
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp()
    return float(value)


def test_non_numeric_values_are_counted_not_rendered(cluster):
    config = config_with(cluster.dsn(), "SELECT * FROM (VALUES ('a', '1.5'::money::text), ('b', 'x')) AS v(k, value)",
                         ["k"], {"value": {}})
    text = scrape_once(config)
    samples = parsed(text)
    assert not any(name == "fz_value" for name, _ in samples)
    assert samples[("pgvigil_query_errors_total", (("query", "fz"), ("reason", "invalid_value"), ("site", 'a"b\\c\nd'),
                                                   ("target", "db")))] == 2
    promtool_check(text)


@FUZZ
@given(observations=st.lists(st.one_of(st.floats(allow_nan=False), st.sampled_from([0.0, 1.0, 5.0, 5.000001])),
                             min_size=0, max_size=20),
       group=tricky_labels)
def test_histograms_parse_back(cluster, observations, group):
    values = ", ".join(f"({literal(group)}::text, {literal(v)}::float8)" for v in observations) or "('x', NULL)"
    config = config_with(cluster.dsn(), f"SELECT * FROM (VALUES {values}) AS v(g, obs)", ["g"],
                         {"obs": {"type": "gauge_histogram", "buckets": [0, 1, 5]}})
    text = scrape_once(config)
    samples = parsed(text)
    if observations:
        labels = (("g", group), ("le", "+Inf"), ("site", 'a"b\\c\nd'), ("target", "db"))
        assert samples[("fz_obs_bucket", labels)] == len(observations)
    promtool_check(text)


def test_rows_beyond_max_series_are_dropped_and_counted(cluster):
    config = config_with(cluster.dsn(), "SELECT g::text AS k, g AS value FROM generate_series(1, 2500) g",
                         ["k"], {"value": {}}, max_series=1000)
    runner = Runner(config)
    try:
        for scrape_number in (1, 2):
            scrape = runner.scrape(30)
            text = ScrapeText(runner.config.queries).text(scrape) + render_self_metrics(scrape)
            samples = parsed(text)
            assert sum(1 for name, _ in samples if name == "fz_value") == 1000
            labels = (("query", "fz"), ("site", 'a"b\\c\nd'), ("target", "db"))
            assert samples[("pgvigil_query_errors_total", labels[:1] + (("reason", "cardinality"),) + labels[1:])] \
                == scrape_number  # one per truncated run; the rest is never fetched
            assert samples[("pgvigil_query_series", labels)] == 1000
            assert samples[("pgvigil_query_success", labels)] == 1  # truncation is not a failed query
        promtool_check(text)
    finally:
        runner.close()


def test_the_documented_default_max_series_applies(cluster):
    config = config_with(cluster.dsn(), "SELECT g::text AS k, 1 AS value FROM generate_series(1, 10005) g",
                         ["k"], {"value": {}})
    assert config.queries[0].max_series == 10000  # README: `max_series: 10000`
    samples = parsed(scrape_once(config))
    assert sum(1 for name, _ in samples if name == "fz_value") == 10000
    assert samples[("pgvigil_query_errors_total", (("query", "fz"), ("reason", "cardinality"),
                                                   ("site", 'a"b\\c\nd'), ("target", "db")))] == 1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_memory_stays_flat_over_repeated_truncated_scrapes(cluster):
    # 50,000 rows per run, 500 kept: after a warm-up, further runs must not grow the process.
    config = config_with(cluster.dsn(), "SELECT g::text AS k, g AS value FROM generate_series(1, 50000) g",
                         ["k"], {"value": {}}, max_series=500)
    runner = Runner(config)
    try:
        for _ in range(3):
            runner.scrape(60)
        before = _rss_bytes()
        for _ in range(15):
            scrape = runner.scrape(60)
            assert ScrapeText(runner.config.queries).text(scrape).count("fz_value{") == 500
        growth = _rss_bytes() - before
    finally:
        runner.close()
    assert growth < 16 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB over 15 scrapes"
