"""Entries -> counters: what each message counts, and the bounds on every label."""
from __future__ import annotations

from exporter.serverlog.classify import MAX_EXACT_CODES, Classifier, client_network
from exporter.serverlog.collector import families
from exporter.serverlog.counters import MAX_LABEL_SETS, LogCounters


def classifier(**kwargs) -> tuple[Classifier, LogCounters]:
    counters = LogCounters()
    found = Classifier(counters, **kwargs)
    found.roles, found.databases = frozenset({"alice", "postgres"}), frozenset({"shop"})
    return found, counters


def test_each_counted_message():
    c, counters = classifier()
    c("LOG", "00000", "a", "shop", "duration: 250.5 ms  statement: SELECT 1", "")
    c("LOG", "00000", "a", "shop", "duration: 0.5 ms  execute <unnamed>: SELECT 1", "")
    c("LOG", "00000", "a", "shop", "duration: 0.5 ms", "")  # log_duration alone: no statement, not counted
    c("LOG", "00000", "a", "shop", "connection authorized: user=a database=shop", "")
    c("LOG", "00000", "a", "shop", "disconnection: session time: 0:00:00.002 user=a database=shop host=[local]", "")
    c("LOG", "00000", "", "", "checkpoints are occurring too frequently (2 seconds apart)", "")
    c("LOG", "00000", "a", "shop", 'temporary file: path "base/pgsql_tmp/pgsql_tmp1.0", size 8192', "")
    c("LOG", "00000", "a", "shop", "process 7 still waiting for ShareLock on transaction 5 after 1000.1 ms", "")
    c("LOG", "00000", "", "", 'automatic vacuum of table "shop.public.t": index scans: 0\n'
      "system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 1.50 s", "")
    c("LOG", "00000", "", "", 'automatic analyze of table "shop.public.t"\nsystem usage: elapsed: 0.25 s', "")
    c("LOG", "00000", "", "", "database system was not properly shut down; automatic recovery in progress", "")
    c("ERROR", "40P01", "a", "shop", "deadlock detected", "")
    c("ERROR", "57014", "a", "shop", "canceling statement due to statement timeout", "")
    c("ERROR", "55P03", "a", "shop", "canceling statement due to lock timeout", "")
    c("FATAL", "53300", "a", "shop", "sorry, too many clients already", "")
    c("PANIC", "XX000", "", "", "could not write to file", "")
    assert counters.simple == {"connections": 1, "disconnections": 1, "checkpoints_too_frequent": 1, "temp_files": 1,
                               "temp_file_bytes": 8192, "lock_waits": 1, "crash_recoveries": 1, "deadlocks": 1,
                               "too_many_connections": 1, "panics": 1}
    assert counters.by_kind["autovacuum_runs"].values == {("vacuum",): 1, ("analyze",): 1}
    assert counters.by_kind["autovacuum_seconds"].values == {("vacuum",): 1.5, ("analyze",): 0.25}
    assert counters.by_kind["cancellations"].values == {("statement_timeout",): 1, ("lock_timeout",): 1}
    assert counters.durations.counts[counters.durations.bounds.index(0.3)] == 1  # 250.5 ms: in (0.25, 0.3]
    assert sum(counters.durations.counts) == 2 and abs(counters.durations.sum - 0.251) < 1e-9
    assert counters.messages.values[("LOG", "00000")] == 11


def test_failed_logins_by_known_user_database_and_method():
    c, counters = classifier()
    for _ in range(3):
        c("FATAL", "28P01", "alice", "shop", 'password authentication failed for user "alice"', "10.1.2.3")
    c("FATAL", "28P01", "Tr0ub4dor&3", "shop", 'password authentication failed for user "Tr0ub4dor&3"', "")
    c("FATAL", "28000", "alice", "nope", 'no pg_hba.conf entry for host "10.1.2.3", user "alice"', "")
    c("FATAL", "28000", "postgres", "shop", 'Peer authentication failed for user "postgres"', "[local]")
    c("FATAL", "28000", "intruder", "shop", 'role "intruder" does not exist', "")
    c("FATAL", "28000", "alice", "shop", 'role "alice" is not permitted to log in', "")
    c("FATAL", "3D000", "alice", "nope", 'database "nope" does not exist', "")
    assert counters.auth_failures.values == {("alice", "shop", "password"): 3, ("unknown", "shop", "password"): 1,
                                             ("alice", "unknown", "no_hba_entry"): 1, ("postgres", "shop", "peer"): 1,
                                             ("unknown", "shop", "unknown_role"): 1,
                                             ("alice", "shop", "login_not_permitted"): 1}


def test_client_network_only_as_an_aggregated_opt_in():
    c, counters = classifier(network_label=True)
    c("FATAL", "28P01", "alice", "shop", 'password authentication failed for user "alice"', "10.1.2.3")
    c("FATAL", "28P01", "alice", "shop", 'password authentication failed for user "alice"', "10.1.2.200")
    c("FATAL", "28P01", "alice", "shop", 'password authentication failed for user "alice"', "2001:db8:1:2::5")
    assert counters.auth_failures.values == {("alice", "shop", "password", "10.1.2.0/24"): 2,
                                             ("alice", "shop", "password", "2001:db8:1::/48"): 1}
    assert client_network("[local]") == "local" and client_network("evil.example") == "other"


def test_sqlstates_are_bounded_rare_codes_fold_into_their_class():
    c, counters = classifier()
    for i in range(MAX_EXACT_CODES + 50):
        c("ERROR", f"P{i:04d}"[:5] if i < 10 else f"22{i:03d}", "a", "shop", "x", "")
    c("ERROR", "ZZ999", "a", "shop", "x", "")  # a class PostgreSQL does not define, past the cap
    c("ERROR", "not a code", "a", "shop", "x", "")
    codes = {code for _, code in counters.messages.values}
    assert len(codes) <= MAX_EXACT_CODES + 3 and "22000" in codes and "other" in codes
    c("WEIRD", None, "", "", "x", "")
    assert ("other", "unknown") in counters.messages.values


def test_without_sqlstate_known_messages_get_their_code():
    c, counters = classifier()
    c("FATAL", None, "alice", "shop", 'password authentication failed for user "alice"', "")
    c("ERROR", None, "alice", "shop", "deadlock detected", "")
    c("ERROR", None, "alice", "shop", "relation \"x\" does not exist", "")
    c("LOG", None, "", "", "checkpoint starting", "")
    assert counters.messages.values == {("FATAL", "28P01"): 1, ("ERROR", "40P01"): 1, ("ERROR", "unknown"): 1,
                                        ("LOG", "00000"): 1}
    assert counters.auth_failures.values == {("alice", "shop", "password"): 1}
    assert counters.simple["deadlocks"] == 1


def test_failed_login_label_sets_are_capped():
    c, counters = classifier()
    c.roles = frozenset(f"user{i}" for i in range(MAX_LABEL_SETS * 2))
    for i in range(MAX_LABEL_SETS * 2):
        c("FATAL", "28P01", f"user{i}", "shop", f'password authentication failed for user "user{i}"', "")
    assert len(counters.auth_failures.values) == MAX_LABEL_SETS + 1
    assert counters.auth_failures.values[("other", "other", "password")] == MAX_LABEL_SETS


def test_families_carry_the_target_labels():
    from exporter.config import parse_config
    from exporter.serverlog.collector import followers_of

    config = parse_config("collectors: []\ntargets:\n  a:\n    dsn: host=x\n    labels: {env: prod}\n"
                          "    log: {source: file, path: /nonexistent}\n  b:\n    dsn: host=y\n"
                          "    log: {source: sql}\n")
    followers = followers_of(config)
    followers[0].classifier("ERROR", "40P01", "", "", "deadlock detected", "")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families(followers) for s in f.samples}
    assert samples[("pg_log_deadlocks_total", (("env", "prod"), ("target", "a")))] == 1
    assert samples[("pg_log_deadlocks_total", (("target", "b"),))] == 0
    assert samples[("pg_log_statement_duration_seconds_bucket", (("le", "+Inf"), ("target", "b")))] == 0
