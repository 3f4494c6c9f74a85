"""The replication and archiver packs on a real primary with a streaming standby.

The primary archives WAL (first successfully, then with a failing archive_command); the standby
is cloned with pg_basebackup through a replication slot, and its replay is paused so that lag
exists to be measured.
"""
from __future__ import annotations

import time

import pytest
from packs.exposition import parse_samples, value

from exporter.config import parse_config
from exporter.dev.throwaway import ThrowawayCluster
from exporter.scrape.assembly import scrape_once

SLOT = "pgvigil_standby"


def wait_until(check, what: str, attempts: int = 400) -> None:
    for _ in range(attempts):
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def archive_fails(primary: ThrowawayCluster):
    """A check that is true once an archive attempt failed, handing the archiver a new segment each
    time it archived one: the archiver rereads archive_command only when the postmaster has
    processed the reload and signalled it, which a busy machine may delay past any fixed sleep."""
    archived_before = [primary.execute("SELECT archived_count FROM pg_stat_archiver")[0][0] - 1]

    def check() -> bool:
        archived, failed = primary.execute("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
        if failed >= 1:
            return True
        if archived > archived_before[0]:  # still the old command (or the first round): another segment
            archived_before[0] = archived
            primary.execute("INSERT INTO archived VALUES (2)")
            primary.execute("SELECT pg_switch_wal()")
        return False
    return check


def scrape(pg: ThrowawayCluster):
    config = parse_config(f"targets:\n  db:\n    dsn: {pg.dsn()}\ncollectors: [replication, archiver]\n")
    samples = parse_samples(scrape_once(config))
    assert [s for s in samples if s.name == "pgvigil_query_success" and s.value != 1] == []
    return samples


@pytest.fixture(scope="module")
def servers():
    primary = ThrowawayCluster(settings={"archive_mode": "on", "archive_command": "'/bin/true'"}).start()
    standby = None
    try:
        standby = ThrowawayCluster.standby_of(primary, SLOT)
        yield primary, standby
    finally:
        if standby is not None:
            standby.cleanup()
        primary.cleanup()


def test_archiver_counts_successes_and_failures(servers):
    primary, _ = servers
    primary.execute("CREATE TABLE archived (id int); INSERT INTO archived VALUES (1)")
    primary.execute("SELECT pg_switch_wal()")
    wait_until(lambda: primary.execute("SELECT archived_count FROM pg_stat_archiver")[0][0] >= 1, "an archived segment")
    primary.execute("ALTER SYSTEM SET archive_command = '/bin/false'")
    primary.execute("SELECT pg_reload_conf()")
    wait_until(archive_fails(primary), "a failed archive")
    primary.execute("ALTER SYSTEM RESET archive_command")
    primary.execute("SELECT pg_reload_conf()")

    samples = scrape(primary)
    archived, failed = primary.execute("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
    assert value(samples, "pg_stat_archiver_archived_count") >= 1
    assert value(samples, "pg_stat_archiver_archived_count") <= archived
    assert 1 <= value(samples, "pg_stat_archiver_failed_count") <= failed
    assert value(samples, "pg_stat_archiver_last_archive_age") >= 0
    assert value(samples, "pg_stat_archiver_last_failure_age") >= 0


def test_replica_lag_while_replay_is_paused(servers):
    primary, standby = servers
    primary.execute("CREATE TABLE replicated (id int); INSERT INTO replicated VALUES (1)")
    wait_until(lambda: standby.execute("SELECT count(*) FROM pg_class WHERE relname = 'replicated'")[0][0] == 1,
               "the standby to replay the first transaction")
    standby.execute("SELECT pg_wal_replay_pause()")
    try:
        time.sleep(1.1)  # the last replayed commit is now more than a second old
        primary.execute("INSERT INTO replicated VALUES (2)")
        # the insert position: with synchronous_commit off the write position may trail the commit
        target_lsn = primary.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]
        wait_until(lambda: standby.execute(
            f"SELECT pg_last_wal_receive_lsn() >= '{target_lsn}'::pg_lsn")[0][0], "the standby to receive the WAL")

        on_standby = scrape(standby)
        assert value(on_standby, "pg_replication_is_replica") == 1
        assert value(on_standby, "pg_replication_lag_seconds") >= 1.0

        on_primary = scrape(primary)
        assert value(on_primary, "pg_replication_is_replica") == 0
        assert value(on_primary, "pg_replication_lag_seconds") == 0
        # postgres_exporter 0.20.1's labels: the address as inet text, the slot the WAL sender streams from
        replica = {"client_addr": "127.0.0.1/32", "state": "streaming", "slot_name": SLOT}
        assert value(on_primary, "pg_stat_replication_pg_wal_lsn_diff", **replica) > 0
        assert value(on_primary, "pg_stat_replication_pg_current_wal_lsn_bytes", **replica) > 0
        assert value(on_primary, "pg_replication_slots_active", slot_name=SLOT, database="") == 1
        # an active physical slot follows the standby's flush position, which keeps up while replay
        # is paused; the inactive slot in test_packs.py shows retained WAL
        assert value(on_primary, "pg_replication_slots_retained_bytes", slot_name=SLOT) >= 0
    finally:
        standby.execute("SELECT pg_wal_replay_resume()")


def test_caught_up_replica_has_no_lag(servers):
    primary, standby = servers
    lsn = primary.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]
    wait_until(lambda: standby.execute(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")[0][0],
               "the standby to catch up")
    # The primary writes WAL of its own now and then (a standby snapshot every 15 s while there is activity):
    # for a few milliseconds the standby has received WAL it has not replayed, and a scrape just then
    # rightly reports lag. Caught up, the metric comes back to 0 between such records.
    wait_until(lambda: value(scrape(standby), "pg_replication_lag_seconds") == 0, "a scrape of the caught-up standby")
