"""Config model: shape, types, cross-references, located error messages."""
from __future__ import annotations

import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

from exporter.config import (
    DEFAULT_KEYS,
    QUERY_KEYS,
    ConfigError,
    Defaults,
    QuerySpec,
    expand_env,
    key_reference,
    load_config,
    parse_config,
    parse_duration,
)


def errors_of(text: str, source: str = "c.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source=source)
    return info.value.errors


def test_issue_example_parses_into_frozen_dataclasses(monkeypatch):
    monkeypatch.setenv("DB_HOST", "db.internal")
    config = parse_config(textwrap.dedent("""
        listen: 127.0.0.1:9187
        targets:
          primary:
            dsn: postgresql://monitor@${DB_HOST}:${DB_PORT:-5432}/app
            labels: {cluster: main}
        defaults: {timeout: 5s, ttl: 0s}
        collectors: []
        queries:
          - name: app_jobs
            help: Background jobs by state
            sql: SELECT state, count(*) AS count, max(age_s) AS oldest_seconds FROM jobs GROUP BY state
            labels: [state]
            metrics:
              count: {type: gauge, help: Jobs in this state}
              oldest_seconds: {type: gauge}
            ttl: 30s
            timeout: 2s
            targets: [primary]
            min_server_version: 130000
          - name: request
            sql: SELECT route, ms / 1000.0 AS duration_seconds FROM request_log WHERE at > {{previous_run}}
            labels: [route]
            metrics:
              duration_seconds: {type: histogram, buckets: [0.05, 0.1, 0.2, 0.5, 1, 2, 5]}
    """))
    assert config.target("primary").dsn == "postgresql://monitor@db.internal:5432/app"
    assert config.target("primary").labels == (("cluster", "main"),)
    jobs, request = config.queries
    assert (jobs.ttl, jobs.timeout, jobs.targets, jobs.min_server_version) == (30.0, 2.0, ("primary",), 130000)
    assert [m.name for m in jobs.metrics] == ["app_jobs_count", "app_jobs_oldest_seconds"]
    assert jobs.metrics[0].help == "Jobs in this state" and jobs.metrics[1].help == "Background jobs by state"
    assert request.uses_previous_run and request.metrics[0].buckets[-1] == 5.0
    assert request.ttl == 0.0 and request.timeout == 5.0
    with pytest.raises(AttributeError):
        jobs.ttl = 1  # frozen


def test_without_targets_one_default_target_comes_from_dsn():
    config = parse_config("collectors: []", dsn="postgresql://x@h/db")
    assert [(t.name, t.dsn) for t in config.targets] == [("default", "postgresql://x@h/db")]
    assert parse_config("collectors: []").targets[0].dsn == ""  # libpq PG* environment


def test_dsn_file_is_read(tmp_path):
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://u:s3cret@h/db\n")
    config = parse_config(f"targets: {{a: {{dsn_file: {secret}}}}}\ncollectors: []")
    assert config.target("a").dsn == "postgresql://u:s3cret@h/db"
    assert "s3cret" not in repr(config)


def test_every_error_is_reported_with_file_line_and_key():
    errors = errors_of("""\
        listen: 9187
        colectors: [default]
        defaults:
          timeout: fast
        queries:
          - name: q1
            sql: select 1 as a
            labels: [a]
            metrics:
              a: {type: gauge}
              b: {type: gauge2}
    """)
    assert errors == [
        "c.yaml:1: listen: expected a string, got the number 9187",
        "c.yaml:2: colectors: unknown key 'colectors'; did you mean 'collectors'?",
        "c.yaml:4: defaults.timeout: expected a duration such as 500ms, 5s, 2m or 1h, got the string 'fast'",
        "c.yaml:10: queries[0].metrics.a: column 'a' is both a label and a metric; use it as one or the other",
        "c.yaml:11: queries[0].metrics.b.type: expected one of gauge, counter, histogram, gauge_histogram, "
        "got the string 'gauge2'; did you mean 'gauge'?",
    ]


@pytest.mark.parametrize("text, expected", [
    ("queries:\n  - name: q\n    sql: select 1 x\n", "c.yaml:2: queries[0]: missing required key 'metrics'"),
    ("queries:\n  - {name: q, sql: SELECT 1, metrics: {x: {type: histogram}}}\n",
     "c.yaml:2: queries[0].metrics.x.buckets: expected a non-empty list of upper bounds, e.g. [0.1, 0.5, 1]"),
    ("queries:\n  - {name: q, sql: SELECT 1, metrics: {x: {type: histogram, buckets: [2, 1]}}}\n",
     "c.yaml:2: queries[0].metrics.x.buckets: expected bucket bounds in strictly increasing order"),
    ("queries:\n  - {name: q, sql: SELECT 1, targets: [nope], metrics: {x: {}}}\n",
     "c.yaml:2: queries[0].targets: unknown target 'nope'; configured: default"),
    ("queries:\n  - {name: q, sql: SELECT 1, labels: [target], metrics: {x: {}}}\n",
     "c.yaml:2: queries[0].labels[0]: label 'target' is set by pgvigil; rename the column"),
    ("queries:\n  - {name: q, sql: SELECT 1, metrics: {x: {}}}\n  - {name: q, sql: SELECT 1, metrics: {y: {}}}\n",
     "c.yaml:3: queries[1]: query name 'q' is used twice"),
    ("queries:\n  - {name: a, sql: SELECT 1, metrics: {x: {name: m}}}\n"
     "  - {name: b, sql: SELECT 1, metrics: {y: {name: m}}}\n",
     "c.yaml:3: queries[1].metrics.y: metric 'm' is also produced by query 'a'"),
    ("queries:\n  - {name: 1bad, sql: SELECT 1, metrics: {x: {}}}\n",
     "c.yaml:2: queries[0].name: expected a name matching [a-zA-Z_:][a-zA-Z0-9_:]*"),
    ("queries:\n  - {name: q, sql: 'select {{previous_run}}', metrics: {x: {}}}\n",
     "c.yaml:2: queries[0].sql: {{previous_run}} only makes sense for histogram metrics"),
    ("defaults: {max_series: -1}\n",
     "c.yaml:1: defaults.max_series: expected a non-negative integer, got the number -1"),
    ("targets: {a: {dsn: x, dsn_file: y}}\n", "c.yaml:1: targets.a: set either 'dsn' or 'dsn_file', not both"),
    ("queries: {}\n", "c.yaml:1: queries: expected a list of queries, got an empty mapping"),
    ("collectors: [nosuchpack]\n", "c.yaml:1: collectors[0]: unknown query pack 'nosuchpack'"),
    ("a: [\n", "c.yaml:2: invalid YAML"),
])
def test_error_messages(text, expected):
    errors = errors_of("collectors: []\n" + text if not text.startswith("collectors") else text)
    shifted = expected if text.startswith("collectors") else _shift(expected)
    assert any(e.startswith(shifted) for e in errors), errors


def test_the_cause_is_reported_not_its_consequences():
    """A typo in a histogram's type made {{previous_run}} look misused too, and that was listed first."""
    errors = errors_of("collectors: []\nqueries:\n  - name: ev\n    sql: SELECT s FROM e WHERE at > {{previous_run}}\n"
                       "    metrics: {s: {type: histgram, buckets: [1]}}\n")
    assert errors == ["c.yaml:5: queries[0].metrics.s.type: expected one of gauge, counter, histogram, "
                      "gauge_histogram, got the string 'histgram'; did you mean 'histogram'?"]


def _shift(message: str) -> str:
    """The test prepends one line, so expected line numbers move by one."""
    source, line, rest = message.split(":", 2)
    return f"{source}:{int(line) + 1}:{rest}"


def test_versioned_variants_may_share_metric_names():
    config = parse_config(textwrap.dedent("""
        collectors: []
        queries:
          - {name: old, sql: SELECT 1, max_server_version: 129999, metrics: {x: {name: m}}}
          - {name: new, sql: SELECT 1, min_server_version: 130000, metrics: {y: {name: m}}}
    """))
    old, new = config.queries
    assert old.runs_on_version(120000) and not old.runs_on_version(130000)
    assert new.runs_on_version(170000) and not new.runs_on_version(120000)


def test_unreadable_file_and_missing_env(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read config" in info.value.errors[0]
    monkeypatch.delenv("NOPE", raising=False)
    errors = errors_of("collectors: []\ntargets:\n  a:\n    dsn: postgresql://u:${NOPE}@h/db\n")
    assert errors == [
        "c.yaml:4: targets.a.dsn: environment variable NOPE is not set (use ${NOPE:-default} for a fallback)"]


@pytest.mark.parametrize("value, seconds", [("5s", 5), ("250ms", 0.25), ("2m", 120), ("1h", 3600), (3, 3),
                                            ("1.5s", 1.5)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["fast", -1, True, "5 parsecs", float("inf")])
def test_invalid_durations(value):
    assert parse_duration(value) is None


def test_env_expansion_defaults():
    assert expand_env("${A:-x}-${B}", {"B": "b"}) == ("x-b", [])
    assert expand_env("${A}", {}) == ("", ["A"])


def test_storage_allocation_sizes():
    config = parse_config("collectors: []\ntargets:\n  a: {dsn: x, storage_allocation: 8GiB}\n  b: {dsn: y}\n")
    assert config.target("a").storage_allocation_bytes == 8 * 1024 ** 3
    assert config.target("b").storage_allocation_bytes is None
    assert errors_of("collectors: []\ntargets:\n  a: {dsn: x, storage_allocation: lots}\n") == [
        "c.yaml:3: targets.a.storage_allocation: expected a size such as 8GB, 500MiB or a number of bytes, "
        "got the string 'lots'"]


def test_readme_key_lists_are_the_declared_tables():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- config-keys:begin -->\n", "\n<!-- config-keys:end -->"
    assert begin in readme and end in readme
    listed = readme[readme.index(begin) + len(begin):readme.index(end)]
    assert listed == key_reference(), "README.md's key lists drifted: paste exporter.config.key_reference() there"


def test_every_declared_option_is_a_field_of_its_dataclass():
    # A new key is one Key line and one field; forgetting the field must fail here, not at a user's scrape.
    query_fields = {f.name for f in fields(QuerySpec)}
    assert {key.name for key in QUERY_KEYS.keys if key.kind is not None} <= query_fields
    assert set(DEFAULT_KEYS.names) == {f.name for f in fields(Defaults)}
    assert Defaults() == Defaults(**{key.name: key.default for key in DEFAULT_KEYS.keys})


@pytest.mark.parametrize("option, written, expected", [
    ("ttl", "0s", 0.0),            # 0: run on every scrape
    ("ttl", None, 7.0),            # absent: defaults.ttl
    ("timeout", "0s", 3.0),        # 0 would switch statement_timeout off: the default applies
    ("timeout", "2s", 2.0),
    ("max_series", 0, 50),
    ("max_series", 5, 5),
])
def test_query_options_fall_back_to_defaults(option, written, expected):
    line = f"    {option}: {written}\n" if written is not None else ""
    config = parse_config("defaults: {ttl: 7s, timeout: 3s, max_series: 50}\ncollectors: []\nqueries:\n"
                          "  - name: q\n    sql: SELECT 1 AS v\n    metrics: {v: {}}\n" + line)
    assert getattr(config.queries[0], option) == expected


def test_unknown_keys_get_a_hint_in_every_section():
    errors = errors_of("""\
        collectors: []
        defaults: {timeot: 1s}
        targets: {a: {pool_sise: 2}}
        backup: {dir: /tmp, keep_day: 3}
        queries:
          - {name: q, sql: SELECT 1 AS v, metrics: {v: {tpye: gauge}}, max_serie: 3}
        """)
    assert errors == [
        "c.yaml:2: defaults.timeot: unknown key 'timeot'; did you mean 'timeout'?",
        "c.yaml:3: targets.a.pool_sise: unknown key 'pool_sise'; did you mean 'pool_size'?",
        "c.yaml:4: backup.keep_day: unknown key 'keep_day'; did you mean 'keep_days'?",
        "c.yaml:6: queries[0].max_serie: unknown key 'max_serie'; did you mean 'max_series'?",
        "c.yaml:6: queries[0].metrics.v.tpye: unknown key 'tpye'; did you mean 'type'?",
    ]


def test_backups_need_a_postgres_target():
    pool = "  pool: {kind: pgbouncer, dsn: 'host=h port=6432 dbname=pgbouncer'}\n"
    assert errors_of("collectors: []\ntargets:\n  db: {dsn: x}\n" + pool + "backup: {dir: /tmp, target: pool}\n") == [
        "c.yaml:5: backup.target: target 'pool' is a pgbouncer admin console, which pg_dump cannot dump; "
        "set backup.target to a postgres target"]
    assert errors_of("collectors: []\ntargets:\n" + pool + "backup: {dir: /tmp}\n") == [
        "c.yaml:4: backup: target 'pool' is a pgbouncer admin console, which pg_dump cannot dump; "
        "set backup.target to a postgres target"]
    assert errors_of("collectors: []\ntargets:\n  db: {dsn: x}\nbackup: {dir: /tmp, target: nope}\n") == [
        "c.yaml:4: backup.target: unknown target 'nope'"]
    parse_config("collectors: []\ntargets:\n  db: {dsn: x}\n" + pool + "backup: {dir: /tmp, target: db}\n")


def test_pgbouncer_targets_and_queries():
    config = parse_config("collectors: [pgbouncer]\ntargets:\n  db: {dsn: x}\n"
                          "  pool: {kind: pgbouncer, dsn: 'host=h port=6432 dbname=pgbouncer'}\n")
    assert [t.kind for t in config.targets] == ["postgres", "pgbouncer"]
    assert {q.kind for q in config.queries} == {"pgbouncer"}
    assert errors_of("collectors: []\ntargets:\n  pool: {kind: pgbouncr, dsn: x}\n") == [
        "c.yaml:3: targets.pool.kind: expected one of postgres, pgbouncer, got the string 'pgbouncr'; "
        "did you mean 'pgbouncer'?"]
    assert errors_of("collectors: []\ntargets:\n  pool: {kind: pgbouncer, dsn: x, databases: all}\n") == [
        "c.yaml:3: targets.pool.databases: a pgbouncer target is one admin console: it has no databases to discover"]
    assert errors_of("collectors: []\nqueries:\n  - {name: q, kind: pgbouncer, sql: 'SHOW POOLS; PAUSE', "
                     "metrics: {x: {}}}\n") == [
        "c.yaml:3: queries[0].sql: a pgbouncer query sends one of the console's commands: SHOW VERSION, "
        "SHOW POOLS, SHOW STATS, SHOW STATS_TOTALS, SHOW DATABASES, SHOW LISTS, SHOW CONFIG"]
    assert errors_of("collectors: []\ntargets: {db: {dsn: x}}\n"
                     "queries:\n  - {name: q, kind: pgbouncer, sql: SHOW POOLS, targets: [db], "
                     "metrics: {x: {}}}\n") == [
        "c.yaml:4: queries[0].targets: target 'db' is a postgres target; this query runs on pgbouncer targets "
        "(its `kind`)"]


@pytest.mark.parametrize("text, expected", [
    # a limit of 0 would switch the server-side bound off (statement_timeout 0) or export nothing
    ("defaults: {timeout: 0s}\n", "c.yaml:2: defaults.timeout: expected a duration above zero, e.g. 5s"),
    ("defaults: {scrape_timeout: 0}\n", "c.yaml:2: defaults.scrape_timeout: expected a duration above zero, e.g. 5s"),
    # the parser stops at a NUL, the driver refuses to send it: one located error instead
    ('queries:\n  - {name: q, sql: "SELECT 1 AS x\\u0000", metrics: {x: {}}}\n',
     "c.yaml:3: queries[0].sql: contains a NUL character"),
    ("queries:\n  - {name: q, sql: SELECT 1 AS x, metrics: {x: {type: histogram, buckets: [1, .nan]}}}\n",
     "c.yaml:3: queries[0].metrics.x.buckets[1]: expected a finite number, got the number nan"),
])
def test_values_pgvigil_cannot_work_with_are_located_errors(text, expected):
    assert expected in errors_of("collectors: []\n" + text)


def test_pick_is_checked_with_the_query_every_problem_at_once():
    errors = errors_of("""\
        collectors: []
        queries:
          - name: no_pick
            sql: SELECT 1 AS x WHERE 1 = ANY ({{picked}})
            metrics: {x: {}}
          - name: unused
            sql: SELECT 1 AS x
            metrics: {x: {}}
            pick: {sql: SELECT 1}
          - name: writes
            sql: SELECT 1 AS x WHERE 1 = ANY ({{picked}})
            metrics: {x: {}}
            pick: {sql: "SELECT 1; DELETE FROM t", every: 0s}
          - name: nested
            sql: SELECT 1 AS x WHERE 1 = ANY ({{picked}})
            metrics: {x: {}}
            pick: {sql: "SELECT oid FROM pg_class WHERE oid = ANY ({{picked}})", evry: 1m}
          - name: console
            kind: pgbouncer
            sql: SHOW POOLS
            metrics: {x: {}}
            pick: {every: 1m}
        """)
    assert errors == [
        "c.yaml:4: queries[0].sql: {{picked}} stands for the ids a `pick:` chose; add `pick: {sql: ...}` or remove it",
        "c.yaml:7: queries[1].sql: never uses {{picked}}, so what the pick chooses would not be read",
        "c.yaml:13: queries[2].pick.every: expected a duration above zero, e.g. 5m",
        "c.yaml:13: queries[2].pick.sql: expected exactly one statement, got 2",
        "c.yaml:17: queries[3].pick.evry: unknown key 'evry'; did you mean 'every'?",
        "c.yaml:17: queries[3].pick.sql: a pick's sql cannot use {{picked}} or {{previous_run}}",
        "c.yaml:22: queries[4].pick: missing required key 'sql'",
    ]


def test_a_pick_reads_the_excluded_schemas_like_its_query():
    config = parse_config(textwrap.dedent("""\
        collectors: []
        defaults: {exclude_schemas: [audit]}
        queries:
          - name: q
            sql: SELECT 1 AS x WHERE 1 = ANY ({{picked}})
            metrics: {x: {}}
            pick: {sql: "SELECT oid FROM pg_namespace WHERE nspname <> ALL ({{excluded_schemas}})"}
        """))
    pick = config.queries[0].pick
    assert pick is not None and pick.every == 300.0
    assert pick.sql == "SELECT oid FROM pg_namespace WHERE nspname <> ALL (ARRAY['audit']::text[])"


def test_sql_labels_name_labels_of_a_query_whose_rows_are_kept():
    assert errors_of("""\
        collectors: []
        queries:
          - {name: a, sql: "SELECT 'x' AS q, 1 AS v", labels: [q], sql_labels: [query], metrics: {v: {}}}
          - {name: b, sql: "SELECT 'x' AS q, 1 AS v", labels: [q], sql_labels: [q],
             metrics: {v: {type: histogram, buckets: [1]}}}
        """) == [
        "c.yaml:3: queries[0].sql_labels[0]: 'query' is not one of the query's labels (q)",
        "c.yaml:4: queries[1].sql_labels: histogram rows are folded as they are fetched: their labels cannot hold "
        "SQL text",
    ]
