"""Config fuzzing: whatever the file holds, the answer is a Config or a located error listing, never a traceback.

Three generators, from blind to structure-aware: random text, random YAML documents (wrong types,
unknown keys, huge numbers, unicode), and single mutations of a valid config at every key path.
"""
from __future__ import annotations

import copy
import math
import re
import threading

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import MAX_DURATION_SECONDS, Config, ConfigError, parse_config

SOURCE = "fuzz.yaml"
# `fuzz.yaml:LINE: key.path: message`, or `fuzz.yaml:LINE: invalid YAML: ...` for syntax errors.
# (A key path shows keys as written, so it may itself hold any character, even a newline.)
LOCATED = re.compile(r"^fuzz\.yaml:\d+: (invalid YAML: .+|.+: .+)$", re.DOTALL)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "listen": "127.0.0.1:9187",
    "targets": {"primary": {"dsn": "postgresql://monitor@db:5432/app", "labels": {"cluster": "main"}},
                "replica": "postgresql://monitor@replica/app"},
    "defaults": {"timeout": "5s", "ttl": "0s", "max_series": 10000, "lock_timeout": "1s"},
    "collectors": [],
    "queries": [
        {"name": "app_jobs", "help": "Jobs", "labels": ["state"], "ttl": "30s", "timeout": "2s",
         "sql": "SELECT state, count(*) AS count, max(age_s) AS oldest_seconds FROM jobs GROUP BY state",
         "metrics": {"count": {"type": "gauge", "help": "Jobs in this state"},
                     "oldest_seconds": {"type": "gauge", "default": 0},
                     "other": {"type": "counter", "name": "pg_full_metric_name_total"}},
         "targets": ["primary"], "min_server_version": 130000, "scope": "database",
         "requires_extension": "pg_stat_statements", "max_series": 100},
        {"name": "request", "labels": ["route"],
         "sql": "SELECT route, ms / 1000.0 AS duration_seconds FROM request_log WHERE at > {{previous_run}}",
         "metrics": {"duration_seconds": {"type": "histogram", "buckets": [0.05, 0.1, 0.5, 1, 5]}}},
    ],
}


def check(text: str) -> Config | None:
    """Parse; any exception but ConfigError fails the test, and every error must be located."""
    try:
        config = parse_config(text, source=SOURCE)
    except ConfigError as exc:
        assert exc.errors, "a ConfigError with no errors"
        for error in exc.errors:
            assert LOCATED.match(error), f"unlocated error: {error!r}"
            assert "Traceback" not in error
        return None
    check_usable(config)
    return config


def check_usable(config: Config) -> None:
    """A config that parses can be run: every duration fits a timer, every limit is positive."""
    durations = [config.defaults.timeout, config.defaults.lock_timeout, config.defaults.connect_timeout,
                 config.defaults.ttl, config.defaults.scrape_timeout]
    for query in config.queries:
        durations += [query.timeout, query.lock_timeout, query.ttl]
        assert query.max_series >= 1
        assert query.metrics
        for metric in query.metrics:
            assert all(math.isfinite(b) for b in metric.buckets)
    for seconds in durations:
        assert 0 <= seconds <= MAX_DURATION_SECONDS < threading.TIMEOUT_MAX


def dump(data: object) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


# -- generators ----------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**53, 2**63, 10**30, -1, 0, 1, 10**4299]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "5s", "250ms", "1e400", "9999999999999d", "gauge", "histogram", "cluster", "default",
                     "${NOPE}", "${HOME:-x}", "\u0000", "\ud7ff\ue000", "🐘", "a\nb", "{{previous_run}}",
                     "le", "target", "__name__", "127.0.0.1:99999", "[::1]:9187"]),
)
keys = st.one_of(st.sampled_from(["listen", "targets", "defaults", "collectors", "queries", "backup", "name",
                                  "sql", "metrics", "labels", "type", "buckets", "dsn", "dsn_file", "ttl",
                                  "timeout", "scope", "help", "default", "max_series", "pool_size"]),
                 st.text(max_size=12), st.integers(), st.booleans())
values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)), max_leaves=25)


def all_paths(data: object, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            paths += all_paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            paths += all_paths(value, prefix + (index,))
    return paths


VALID_PATHS = all_paths(VALID)[1:]


def mutate(path: tuple, how: str, value: object) -> dict:
    data = copy.deepcopy(VALID)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif how == "unknown_key" and isinstance(parent, dict):
        parent[f"{last}_typo"] = value
    elif how == "wrap":
        parent[last] = [parent[last]]
    return data


# -- properties ------------------------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    check(text)


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_random_yaml_documents(document):
    document.setdefault("collectors", [])  # loading the shipped packs is slow; the mutations cover them
    check(dump(document))


@FUZZ
@given(st.sampled_from(VALID_PATHS), st.sampled_from(["replace", "delete", "unknown_key", "wrap"]), values)
def test_single_mutations_of_a_valid_config(path, how, value):
    check(dump(mutate(path, how, value)))


def test_the_valid_base_config_parses():
    config = check(dump(VALID))
    assert config is not None and [q.name for q in config.queries] == ["app_jobs", "request"]


@pytest.mark.parametrize("text, expected", [
    ("a: &x [*x]\n", "fuzz.yaml:1: invalid YAML: nested too deeply (or an alias refers to itself)"),
    ("[" * 5000 + "]" * 5000, "fuzz.yaml:1: invalid YAML: nested too deeply"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(7)),
     "fuzz.yaml:1: invalid YAML: more than 1000000 values once aliases are expanded"),
    ("defaults: {max_series: 1" + "0" * 5000 + "}\n",
     "fuzz.yaml:1: invalid YAML: cannot read value: Exceeds the limit (4300 digits) for integer string conversion: "
     "value has 5001 digits"),
    ('targets: {a: {dsn_file: "a\\0b"}}\n',
     "fuzz.yaml:1: targets.a.dsn_file: cannot read DSN file 'a\\x00b': the path contains a NUL byte"),
    ("defaults: {timeout: 99999999999d}\n",
     "fuzz.yaml:1: defaults.timeout: expected a duration such as 500ms, 5s, 2m or 1h, got the string '99999999999d'"),
    ("listen: !!python/object/apply:os.system echo\n",
     "fuzz.yaml:1: invalid YAML: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("listen: !!python/object/apply:os.system [echo]\n",  # tags on collections are ignored: plain data
     "fuzz.yaml:1: listen: expected a string, got a list"),
], ids=["recursive-alias", "deep-nesting", "billion-laughs", "huge-integer", "nul-in-path", "huge-duration",
        "python-tag", "python-tag-on-a-list"])
def test_hostile_documents_get_a_clear_error(text, expected):
    with pytest.raises(ConfigError) as raised:
        parse_config(text, source=SOURCE)
    assert raised.value.errors == [expected]
