"""The sampler's bounded accumulator (waitprofile.py) and its config keys: no database needed."""
from __future__ import annotations

import time

import pytest

from exporter.config import ConfigError, parse_config
from exporter.scrape.waitprofile import MAX_VALUE_BYTES, OTHER, WaitProfile, bounded

LABELS = ("app", "wait")


def profile(capacity: int = 2, rotation: float = 1e9) -> WaitProfile:
    return WaitProfile(LABELS, ("app",), capacity, rotation)


def total(p: WaitProfile) -> float:
    return sum(p.tracked.values()) + sum(p.remainders.values())


def test_the_first_label_sets_are_tracked_and_the_rest_add_up_in_remainders_that_keep_the_wait():
    p = profile()
    p.add({("a", "Lock"): 2, ("b", "CPU"): 1, ("c", "Lock"): 3, ("d", "IO"): 1}, 1.0)
    assert p.tracked == {("a", "Lock"): 2.0, ("b", "CPU"): 1.0}
    assert p.remainders == {(OTHER, "Lock"): 3.0, (OTHER, "IO"): 1.0}
    assert total(p) == 7.0


def test_remainders_are_bounded_too_then_everything_is_other():
    p = profile(capacity=1)
    p.add({("a", "Lock"): 1, ("b", "CPU"): 1, ("c", "IO"): 1, ("d", "Timeout"): 1}, 0.5)
    assert len(p.tracked) == 1 and len(p.remainders) == 2
    assert p.remainders[(OTHER, OTHER)] == 1.0
    assert total(p) == 2.0


def test_rotation_takes_the_top_of_the_period_and_drops_label_sets_gone_quiet():
    p = profile(capacity=2, rotation=3.0)
    p.add({("old1", "CPU"): 1, ("old2", "CPU"): 1}, 1.0)
    for _ in range(2):  # a new, heavier application: in the remainder until the period ends
        p.add({("old1", "CPU"): 1, ("hot", "Lock"): 5}, 1.0)
    assert set(p.tracked) == {("old1", "CPU"), ("hot", "Lock")}
    assert p.tracked[("hot", "Lock")] == 0.0  # starts from what it gains from now on
    before = total(p)
    p.add({("hot", "Lock"): 5, ("old2", "CPU"): 1}, 1.0)
    assert p.tracked[("hot", "Lock")] == 5.0
    assert total(p) == before + 6.0  # every second in exactly one exported counter


def test_candidates_are_bounded_whatever_the_number_of_label_sets():
    p = profile(capacity=3, rotation=1e9)
    for round_ in range(50):
        p.add({(f"app{round_}-{i}", "CPU"): 1 for i in range(100)}, 1.0)
    assert len(p.tracked) == 3 and len(p.remainders) <= 3
    assert len(p._recent) <= 2 * 3 + 3
    assert total(p) == 5000.0


def test_label_values_are_cut_to_their_byte_bound_on_a_character():
    assert bounded(None) == ""
    long = "é" * 200
    cut = bounded(long)
    assert len(cut.encode()) <= MAX_VALUE_BYTES and long.startswith(cut)


def test_render_escapes_hostile_values():
    p = profile()
    p.add({('a"b\\c\nd', "CPU"): 1}, 1.0)
    assert p.render("m", 'target="t"') == ['m{target="t",app="a\\"b\\\\c\\nd",wait="CPU"} 1.0\n']


def target(extra: str) -> str:
    return f"collectors: []\ntargets:\n  db:\n    dsn: host=x\n{extra}"


@pytest.mark.parametrize("value, seconds", [("off", 0.0), ("0", 0.0), ("250ms", 0.25), ("2s", 2.0), ("false", 0.0)])
def test_sample_interval_values(value, seconds):
    spec = parse_config(target(f"    sample_interval: {value}\n"), source="t.yaml").targets[0]
    assert spec.sample_interval == seconds


def test_sampling_defaults():
    spec = parse_config(target(""), source="t.yaml").targets[0]
    assert (spec.sample_interval, spec.sample_top) == (1.0, 100)


@pytest.mark.parametrize("line, message", [
    ("sample_interval: 10ms", "t.yaml:5: targets.db.sample_interval: expected a duration from 100ms to 1h such as 1s, "
                              "or 0 or off to sample nothing, got the string '10ms'"),
    ("sample_interval: soon", "t.yaml:5: targets.db.sample_interval: expected a duration from 100ms to 1h such as 1s, "
                              "or 0 or off to sample nothing, got the string 'soon'"),
    ("sample_top: 0", "t.yaml:5: targets.db.sample_top: expected a number of label sets between 1 and 1000"),
    ("sample_top: many", "t.yaml:5: targets.db.sample_top: expected a non-negative integer, got the string 'many'"),
])
def test_sampling_keys_errors_are_located(line, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(target(f"    {line}\n"), source="t.yaml")
    assert caught.value.errors == [message]


class ScriptedSession:
    """A session whose first sample raises something unexpected, then answers one sleeping session."""

    def __init__(self) -> None:
        from exporter.scrape.session import ServerFacts

        self.facts = ServerFacts(version=150000, identity="s", extensions=frozenset(), database="db")
        self.runs = 0
        self.closed = 0

    def ensure_connected(self):  # type: ignore[no-untyped-def]
        return self.facts

    def run(self, prepared, timeout, lock_timeout):  # type: ignore[no-untyped-def]
        from exporter.scrape.session import FetchResult

        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("a bug")
        columns = ["datname", "usename", "application_name", "backend_type", "state", "wait_event_type",
                   "wait_event", "queryid", "sessions"]
        return FetchResult(columns, [("db", "u", "app", "client backend", "active", None, None, "42", 2)])

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def test_an_unexpected_error_is_counted_and_sampling_goes_on():
    from exporter.config import Defaults
    from exporter.scrape.sampler import Sampler

    session = ScriptedSession()
    sampler = Sampler("db", 'target="db"', session, 0.1, 10, Defaults())  # type: ignore[arg-type]
    sampler.start()
    try:
        for _ in range(100):
            if sampler.stats.samples >= 2:
                break
            time.sleep(0.05)
    finally:
        sampler.close()
    assert sampler.stats.failures == 1 and sampler.stats.samples >= 2
    assert sampler.waits.tracked[("db", "u", "app", "client backend", "active", "CPU", "CPU")] == \
        pytest.approx(0.2 * sampler.stats.samples)
    assert sampler.statements.tracked[("db", "42", "CPU", "CPU")] == pytest.approx(0.2 * sampler.stats.samples)
    assert not sampler.alive and session.closed >= 1
