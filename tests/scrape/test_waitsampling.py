"""pg_wait_sampling's profile turned into sampled seconds (no server): differences, resets, labels of
pids gone, the idle filter and CPU from either source."""
from __future__ import annotations

import pytest

from exporter.scrape.waitsampling import CPU, UNKNOWN, ProfileDelta, period_seconds, unusable

COLUMNS = ["kind", "pid", "event_type", "event", "queryid", "count", "present", "hidden",
           "datname", "usename", "application_name", "backend_type", "state"]
APP = ("db", "alice", "app", "client backend")


def profile(pid, event_type, event, count, state="active", present=True, hidden=False, queryid="0", app=APP):
    return ("profile", pid, event_type, event, queryid, count, present, hidden, *app, state)


def cpu(state="active", queryid=None, app=APP):
    return ("cpu", 1, None, None, queryid, 1, True, False, *app, state)


def read(delta: ProfileDelta, *rows, cpu_in_profile=False):
    return delta.read(COLUMNS, list(rows), 0.01, cpu_in_profile, 1.0)


def key(event_type, event, state="active", app=APP):
    return (*app, state, event_type, event)


def test_differences_times_the_period_from_the_second_read_on():
    delta = ProfileDelta()
    assert read(delta, profile(7, "Timeout", "PgSleep", 500)) is None  # a baseline
    waits, statements = read(delta, profile(7, "Timeout", "PgSleep", 520),
                             profile(7, "Timeout", "PgSleep", 60, queryid="42"), cpu())
    # the queryid appeared in this read: its whole count is new
    assert waits == {key("Timeout", "PgSleep"): pytest.approx(0.8), key(CPU, CPU): 1.0}
    assert statements == {("db", "42", "Timeout", "PgSleep"): pytest.approx(0.6)}
    waits, _ = read(delta, profile(7, "Timeout", "PgSleep", 620), profile(7, "Timeout", "PgSleep", 110, queryid="42"))
    assert waits == {key("Timeout", "PgSleep"): pytest.approx(1.0 + 0.5)}


def test_a_reset_or_a_count_going_down_starts_again_never_negative():
    delta = ProfileDelta()
    read(delta, profile(7, "Lock", "tuple", 300), profile(8, "IO", "DataFileRead", 5))
    assert read(delta, profile(7, "Lock", "tuple", 50)) is None  # reset: entries gone, counts down
    assert delta.resets == 1
    waits, _ = read(delta, profile(7, "Lock", "tuple", 150))
    assert waits == {key("Lock", "tuple"): pytest.approx(1.0)}
    assert read(delta, profile(7, "Lock", "tuple", 149)) is None and delta.resets == 2
    waits, _ = read(delta, profile(7, "Lock", "tuple", 149))
    assert waits == {}


def test_a_pid_gone_keeps_its_labels_of_the_previous_read_else_unknown():
    delta = ProfileDelta()
    read(delta, profile(7, "Lock", "transactionid", 10))
    waits, _ = read(delta, profile(7, "Lock", "transactionid", 60, present=False, app=(None,) * 4, state=None),
                    profile(9, "IO", "DataFileRead", 20, present=False, app=(None,) * 4, state=None),
                    profile(9, "Client", "ClientRead", 20, present=False, app=(None,) * 4, state=None))
    assert waits == {key("Lock", "transactionid"): pytest.approx(0.5),
                     ((UNKNOWN,) * 5 + ("IO", "DataFileRead")): pytest.approx(0.2)}


def test_the_polling_filter_idle_sessions_main_loops_hidden_and_own_sessions():
    delta = ProfileDelta()
    rows = [profile(7, "Client", "ClientRead", 0, state="idle"), profile(7, "IO", "DataFileRead", 0, state="idle"),
            profile(8, "Client", "ClientRead", 0, state="idle in transaction"),
            profile(9, "Activity", "WalWriterMain", 0, state=None, app=(None, None, None, "walwriter")),
            profile(10, "Lock", "tuple", 0, hidden=True)]
    read(delta, *rows)
    waits, _ = read(delta, *(row[:5] + (100,) + row[6:] for row in rows), cpu(state="idle in transaction"))
    assert waits == {key("IO", "DataFileRead"): pytest.approx(1.0),  # an idle session's work: while active
                     key("Client", "ClientRead", "idle in transaction"): pytest.approx(1.0),
                     key(CPU, CPU, "idle in transaction"): 1.0}


def test_cpu_from_the_profile_when_the_collector_samples_it_else_from_pg_stat_activity():
    delta = ProfileDelta()
    read(delta, profile(7, None, None, 0), cpu_in_profile=True)
    waits, _ = read(delta, profile(7, None, None, 90), cpu(), cpu_in_profile=True)
    assert waits == {key(CPU, CPU): pytest.approx(0.9)}  # the snapshot's CPU is not counted twice
    waits, _ = read(delta, profile(7, None, None, 190), cpu(), cpu(), cpu_in_profile=False)
    assert waits == {key(CPU, CPU): 2.0}


def test_settings_and_privileges_say_why_the_profile_is_not_read():
    assert unusable((True, "10", "on")) is None
    assert "grants" in unusable((False, "10", "on"))
    assert "shared_preload_libraries" in unusable((True, None, None))
    assert "profile_pid" in unusable((True, "10", "off"))
    assert "profile_period" in unusable((True, "-1; DROP", "on"))
    assert "missing" in unusable(None)
    assert period_seconds("10") == 0.01 and period_seconds("0") is None and period_seconds("99999999") is None


def test_a_count_stands_for_the_interval_over_the_samples_the_collector_really_took():
    delta = ProfileDelta()
    walwriter = (None, None, None, "walwriter")
    read(delta, profile(3, "Activity", "WalWriterMain", 1000, state=None, app=walwriter),
         profile(7, "Timeout", "PgSleep", 0))
    # 1 s between the reads, but a late collector took 90 samples (the walwriter, always waiting, got each)
    waits, _ = delta.read(COLUMNS, [profile(3, "Activity", "WalWriterMain", 1090, state=None, app=walwriter),
                                    profile(7, "Timeout", "PgSleep", 45)], 0.01, False, 1.0, at=None)
    assert waits == {key("Timeout", "PgSleep"): pytest.approx(0.45)}  # no time given: counts × period
    delta.previous_at = 10.0
    waits, _ = delta.read(COLUMNS, [profile(3, "Activity", "WalWriterMain", 1180, state=None, app=walwriter),
                                    profile(7, "Timeout", "PgSleep", 90)], 0.01, False, 1.0, at=11.0)
    assert waits == {key("Timeout", "PgSleep"): pytest.approx(0.5)}  # 45 of 90 samples: half of the second
    delta.previous_at = 20.0  # a stalled collector: at most twice the period per count
    waits, _ = delta.read(COLUMNS, [profile(3, "Activity", "WalWriterMain", 1190, state=None, app=walwriter),
                                    profile(7, "Timeout", "PgSleep", 100)], 0.01, False, 1.0, at=21.0)
    assert waits == {key("Timeout", "PgSleep"): pytest.approx(0.2)}
