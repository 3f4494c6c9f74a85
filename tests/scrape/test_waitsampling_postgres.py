"""The sampler reading pg_wait_sampling's profile on real PostgreSQL 15 (the extension preloaded): the
same ground truth as the polling sampler's accuracy test, a reset mid-run, the mode it says it uses,
and a role that may not read the profile: polling, logged once, and `pgvigil grants` prints the grant."""
from __future__ import annotations

import logging
import time
import uuid
from typing import Iterator

import psycopg
import pytest
from click.testing import CliRunner

from exporter.cli import main
from exporter.config import Defaults, TargetSpec
from exporter.dev.throwaway import ThrowawayCluster
from exporter.scrape.sampler import CPU, Sampler, self_metric_families
from exporter.scrape.session import TargetSession
from tests.conftest import wait_until
from tests.scrape.test_sampler_postgres import CPU_LOOP, Workload, by_wait, started

DEFAULTS = Defaults()
SLEEPERS, LOCKED, BURNERS = 3, 2, 2
WINDOW = 20.0


@pytest.fixture(scope="module")
def pws_cluster() -> Iterator[ThrowawayCluster]:
    """PostgreSQL 15 with pg_wait_sampling preloaded (Debian's postgresql-15-pg-wait-sampling, which
    scripts/test.sh installs: missing, the server fails to start and the tests fail, never skip)."""
    pg = ThrowawayCluster(settings={"max_connections": "60"}, preload=("pg_stat_statements", "pg_wait_sampling"))
    try:
        pg.start()
        yield pg
    finally:
        assert not pg.cleanup()


@pytest.fixture
def pws_db(pws_cluster) -> Iterator[tuple[ThrowawayCluster, str, str]]:
    name = "w_" + uuid.uuid4().hex[:10]
    dsn = pws_cluster.create_database(name)
    pws_cluster.execute("CREATE EXTENSION pg_wait_sampling", name)
    yield pws_cluster, name, dsn
    pws_cluster.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                        " AND pid <> pg_backend_pid()")


def make_sampler(dsn: str, interval: float) -> Sampler:
    return Sampler("db", 'target="db"', TargetSession(TargetSpec(name="db", dsn=dsn), DEFAULTS), interval, 100,
                   DEFAULTS)


def source_of(sampler: Sampler) -> str:
    ((labels, value),) = self_metric_families([sampler])["pgvigil_sampler_source"][2]
    assert value == 1
    return labels.split('source="')[1].rstrip('"')


def test_profile_accuracy_idle_filter_and_a_reset_mid_run(pws_db, capsys):
    cluster, name, dsn = pws_db
    work = Workload(dsn)
    try:
        admin = work.connect("pw-admin")
        admin.execute("CREATE TABLE gt (id int PRIMARY KEY, v int); INSERT INTO gt VALUES (1, 0)")
        for _ in range(SLEEPERS):
            work.loop("pw-sleep", "SELECT pg_sleep(5)")
        for _ in range(BURNERS):
            work.loop("pw-cpu", CPU_LOOP)
        for _ in range(2):
            work.connect("pw-idle").execute("SELECT 1")  # idle sessions: pg_wait_sampling samples their ClientRead
        holder = work.connect("pw-holder")  # idle in transaction: its ClientRead counts, as when polling
        holder.execute("BEGIN")
        holder.execute("SELECT * FROM gt WHERE id = 1 FOR UPDATE")
        for _ in range(LOCKED):
            work.loop("pw-locked", "UPDATE gt SET v = v + 1 WHERE id = 1")
        wait_until(lambda: cluster.execute(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' AND"
                                           " application_name = 'pw-locked' AND wait_event_type = 'Lock'")[0][0]
                   == LOCKED, 30, "the lock waiters")
        with started(make_sampler(dsn, 1.0)) as sampler:
            wait_until(lambda: sampler.stats.samples >= 3, 30, "the first reads")
            assert source_of(sampler) == "pg_wait_sampling"
            before = {app: by_wait(sampler, app) for app in ("pw-sleep", "pw-cpu", "pw-locked", "pw-holder")}
            start = time.monotonic()
            time.sleep(WINDOW)
            after = {app: by_wait(sampler, app) for app in before}
            elapsed = time.monotonic() - start
            idle = by_wait(sampler, "pw-idle")
            everything = by_wait(sampler)

            def aas(app: str, kind: str | None = None) -> float:
                return sum(v - before[app].get(k, 0.0) for k, v in after[app].items()
                           if kind is None or k[0] == kind) / elapsed
            measured = {"pg_sleep": aas("pw-sleep", "Timeout"), "row lock": aas("pw-locked", "Lock"),
                        "CPU": aas("pw-cpu", CPU), "idle in transaction": aas("pw-holder", "Client")}
            truth = {"pg_sleep": SLEEPERS, "row lock": LOCKED, "CPU": BURNERS, "idle in transaction": 1}
            with capsys.disabled():
                print(f"\npg_wait_sampling profile accuracy over {elapsed:.1f}s: " + ", ".join(
                    f"{k} {v:.2f} (truth {truth[k]})" for k, v in measured.items()) +
                    f"; reads {sampler.stats.samples}, skipped {sampler.stats.skipped}")
            for what, value in measured.items():
                assert value == pytest.approx(truth[what], rel=0.10), (what, measured)
            assert not idle, idle  # idle sessions' ClientRead is not time spent
            assert not [k for k in everything if k[0] == "Activity"]  # nor background main loops

            # A reset mid-run: counted again from the next read, nothing ever goes down.
            totals = dict(sampler.waits.tracked)
            resets = sampler._profile.resets
            cluster.execute("SELECT pg_wait_sampling_reset_profile()", name)
            wait_until(lambda: sampler._profile.resets > resets, 10, "the reset seen")
            seen = sampler.stats.samples
            wait_until(lambda: sampler.stats.samples >= seen + 3, 10, "reads after the reset")
            assert all(sampler.waits.tracked.get(k, 0.0) >= v for k, v in totals.items())
            sleep_key = next(k for k in sampler.waits.tracked if k[2] == "pw-sleep" and k[5] == "Timeout")
            gained = sampler.waits.tracked[sleep_key] - totals.get(sleep_key, 0.0)
            assert SLEEPERS * 1.5 <= gained, gained  # at least 2 of the 3+ intervals counted again
            assert source_of(sampler) == "pg_wait_sampling" and sampler.stats.failures == 0
        holder.execute("ROLLBACK")
    finally:
        work.close()
    assert not work.errors, work.errors


def test_a_role_that_may_not_read_the_profile_polls_says_so_once_and_grants_prints_the_grant(
        pws_db, caplog, tmp_path):
    cluster, name, dsn = pws_db
    role = "pw_" + uuid.uuid4().hex[:6]
    cluster.execute(f"CREATE ROLE {role} LOGIN IN ROLE pg_read_all_stats;"
                    " REVOKE SELECT ON pg_wait_sampling_profile FROM PUBLIC", name)
    role_dsn = cluster.dsn(name, user=role)
    try:
        with caplog.at_level(logging.WARNING, logger="exporter.scrape.sampler"):
            with started(make_sampler(role_dsn, 0.2)) as sampler:
                wait_until(lambda: sampler.stats.samples >= 5, 20, "samples")
                assert source_of(sampler) == "pg_stat_activity" and sampler.stats.failures == 0
                sampler.session.close()  # a reconnect chooses again: still not readable, not logged again
                seen = sampler.stats.samples
                wait_until(lambda: sampler.stats.samples >= seen + 3, 20, "samples after a reconnect")
        told = [r.getMessage() for r in caplog.records if "pg_wait_sampling" in r.getMessage()]
        assert len(told) == 1 and "may not read" in told[0], told

        config = tmp_path / "pgvigil.yaml"
        config.write_text(f"targets:\n  app: {role_dsn}\n")
        result = CliRunner().invoke(main, ["grants", "--config", str(config)])
        assert result.exit_code == 0, result.output
        grant = f"GRANT SELECT ON public.pg_wait_sampling_profile TO {role};"
        assert grant in result.output.splitlines(), result.output
        assert "-- missing today: pg_wait_sampling's profile" in result.output

        cluster.execute(grant, name)
        with started(make_sampler(role_dsn, 0.2)) as sampler:
            wait_until(lambda: sampler.stats.samples >= 3, 20, "reads")
            assert source_of(sampler) == "pg_wait_sampling"
        again = CliRunner().invoke(main, ["grants", "--config", str(config)])
        assert "pg_wait_sampling" not in again.output, again.output
    finally:
        cluster.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        cluster.execute(f"DROP OWNED BY {role}", name)
        cluster.execute(f"DROP ROLE {role}")


def test_where_the_extension_is_not_in_this_database_the_sampler_polls(pws_cluster):
    name = "w_" + uuid.uuid4().hex[:10]
    dsn = pws_cluster.create_database(name)  # the library is preloaded, the extension is not created here
    with started(make_sampler(dsn, 0.2)) as sampler:
        wait_until(lambda: sampler.stats.samples >= 2, 20, "samples")
        assert source_of(sampler) == "pg_stat_activity"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_wait_sampling'").fetchone()[0] == 0


def test_the_profile_is_named_by_the_catalog_in_a_hostile_schema_never_through_search_path(pws_cluster):
    name = "w_" + uuid.uuid4().hex[:10]
    dsn = pws_cluster.create_database(name)
    # The extension in a schema whose name needs quoting; a decoy of the same name where search_path looks.
    pws_cluster.execute('CREATE SCHEMA "we""ird. sch"; CREATE EXTENSION pg_wait_sampling WITH SCHEMA "we""ird. sch";'
                        " CREATE VIEW public.pg_wait_sampling_profile AS SELECT 1 AS pid, 'Lock' AS event_type,"
                        " 'decoy' AS event, 0::int8 AS queryid, (random() * 1e9)::int8 AS count", name)
    with psycopg.connect(dsn, autocommit=True, application_name="pw-hostile") as conn:
        with started(make_sampler(dsn, 0.3)) as sampler:
            wait_until(lambda: sampler.stats.samples >= 2, 20, "the first reads")
            assert source_of(sampler) == "pg_wait_sampling"
            conn.execute("SELECT pg_sleep(1.5)")
            wait_until(lambda: sampler.stats.samples >= 8, 20, "reads")
            waits = by_wait(sampler)
    assert sampler.stats.failures == 0
    assert not [k for k in waits if k[1] == "decoy"]
    assert by_wait(sampler, "pw-hostile").get(("Timeout", "PgSleep"), 0.0) == pytest.approx(1.5, rel=0.15)


def test_a_discovery_root_reads_the_profile_on_its_budget_slot_and_says_so_on_metrics(pws_db):
    from exporter.config import parse_config
    from exporter.server import Exporter
    from tests.conftest import parse_exposition, sample

    cluster, name, _ = pws_db
    work = Workload(cluster.dsn(name))
    try:
        work.loop("pw-root-sleeper", "SELECT pg_sleep(5)")
        # the root's DSN is the database with the extension (the profile is the whole server's)
        body = (f"collectors: []\ntargets:\n  all:\n    dsn: {cluster.dsn(name)}\n    databases: ['{name}', postgres]\n"
                "    sample_interval: 0.5\n")
        exporter = Exporter(parse_config(body, source="t.yaml"))
        try:
            sampler = exporter.runner.samplers.by_target["all"]
            exporter.metrics(10.0)
            wait_until(lambda: sampler.stats.samples >= 4, 30, "reads")
            samples = parse_exposition(exporter.metrics(10.0))
            assert sample(samples, "pgvigil_sampler_source", target="all", source="pg_wait_sampling") == 1
            assert sample(samples, "pg_wait_sampled_seconds_total", target="all", datname=name,
                          application_name="pw-root-sleeper", state="active", wait_event="PgSleep") >= 0.5
            assert exporter.runner.roots["all"].budget.open <= 5
        finally:
            exporter.close()
        assert not sampler.alive and exporter.runner.roots["all"].budget.open == 0
    finally:
        work.close()
