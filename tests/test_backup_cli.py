"""pgvigil backup run/verify/prune/status through the real CLI, driven by a config file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from backup_support import SEED_SQL, backup_metrics, dbname_of
from click.testing import CliRunner

from exporter.cli import main


@pytest.fixture
def app_db(cluster, fresh_db):
    cluster.execute(SEED_SQL, dbname_of(fresh_db))
    return fresh_db


@pytest.fixture
def config_file(app_db, tmp_path) -> Path:
    path = tmp_path / "pgvigil.yaml"
    path.write_text(f"""
targets:
  primary:
    dsn: {app_db}
collectors: []
backup:
  dir: {tmp_path / 'backups'}
  target: primary
  keep_last: 1
  sanity_query: SELECT count(*) > 0 FROM customers
""")
    return path


def pgvigil(*args: str):
    result = CliRunner().invoke(main, ["backup", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_commands_read_the_config(config_file, tmp_path):
    backups = tmp_path / "backups"
    code, out = pgvigil("run", "--config", str(config_file))
    assert code == 0, out
    assert out.startswith("backup primary-") and f"({backups}/primary-" in out

    code, out = pgvigil("verify", "--config", str(config_file), "--restore")
    assert code == 0, out
    assert out.splitlines()[-1] == "  ok      sanity query returned True"
    # the long steps announce themselves as they start (on stderr)
    assert "  ...     restoring " in out and " MiB into scratch database pgvigil_verify_" in out
    assert "  ...     comparing the row counts of " in out

    assert pgvigil("run", "--config", str(config_file))[0] == 0
    code, out = pgvigil("status", "--config", str(config_file), "--json")
    rows = json.loads(out)
    assert [(r["condition"], r["good"]) for r in rows] == [("unverified", True), ("restored", True)]

    code, out = pgvigil("prune", "--config", str(config_file))  # keep_last: 1 from the config
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["kept", "kept"]  # newest + newest verified

    code, out = pgvigil("status", "--config", str(config_file))
    assert out.splitlines()[0].split() == ["BACKUP", "TARGET", "FINISHED", "(UTC)", "SIZE", "CONDITION",
                                           "VERIFIED", "(UTC)", "NOTE"]
    assert [line.split()[6] for line in out.splitlines()[1:]] == ["unverified", "restored"]
    assert backup_metrics(backups, "primary")["pgvigil_backup_last_verify_success"] == 1.0


def test_flags_override_the_config(config_file, tmp_path):
    other = tmp_path / "elsewhere"
    code, out = pgvigil("run", "--config", str(config_file), "--dir", str(other), "--target", "primary")
    assert code == 0, out
    assert list(other.glob("primary-*.dump"))
    assert not (tmp_path / "backups").exists()


def test_failed_verification_exits_1(config_file, tmp_path):
    assert pgvigil("run", "--config", str(config_file))[0] == 0
    [dump] = (tmp_path / "backups").glob("*.dump")
    data = dump.read_bytes()
    dump.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    code, out = pgvigil("verify", "--config", str(config_file))
    assert code == 1
    assert out.splitlines()[-1].startswith("  FAILED  checksum mismatch: ")


@pytest.mark.parametrize("args, message", [
    (["run", "--dir", "/tmp/x"], "Error: give --dsn, or --config and --target naming one of its targets"),
    (["status"], "Error: give --dir, or --config with a backup: section that sets dir"),
    (["prune", "--dir", "/tmp/x", "--keep-last", "0"],
     "Error: Invalid value for '--keep-last': 0 is not in the range x>=1."),
    (["verify", "--dir", "/tmp"], "Error: no complete backup in /tmp"),
    *[([command, "--dir", "/tmp/pgvigil-no-such-dir"], "Error: backup directory /tmp/pgvigil-no-such-dir does not "
       "exist (give the --dir or backup.dir that `pgvigil backup run` writes to)")
      for command in ("status", "verify", "prune")],
])
def test_usage_errors_are_one_clear_line(args, message):
    result = CliRunner().invoke(main, ["backup", *args])
    assert result.exit_code in (1, 2)
    assert result.output.strip().splitlines()[-1] == message
    assert "Traceback" not in result.output


def test_unknown_target_in_config(config_file):
    code, out = pgvigil("run", "--config", str(config_file), "--target", "nope")
    assert code == 2
    assert out.strip().splitlines()[-1] == "Error: target 'nope' is not in the config (targets: primary)"


def test_a_pgbouncer_target_is_refused_by_name(config_file):
    """`--target` may name any target of the config: a PgBouncer console is refused before pg_dump runs."""
    pool = "  pool:\n    kind: pgbouncer\n    dsn: host=127.0.0.1 port=1 dbname=pgbouncer\n"
    config_file.write_text(config_file.read_text().replace("collectors: []", pool + "collectors: []"))
    code, out = pgvigil("run", "--config", str(config_file), "--target", "pool")
    assert code == 2
    assert out.strip().splitlines()[-1] == ("Error: target 'pool' is a pgbouncer admin console, which pg_dump "
                                            "cannot dump; name a postgres target")


def test_serve_exports_the_backup_state(config_file, tmp_path):
    """The exporter as `pgvigil serve` builds it: /metrics carries the pgvigil_backup_* series."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from exporter.config import load_config
    from exporter.server import extra_collectors, start_server

    assert pgvigil("run", "--config", str(config_file))[0] == 0
    assert pgvigil("verify", "--config", str(config_file))[0] == 0
    config = load_config(config_file)
    handle = start_server(config, extra_collectors=extra_collectors(config))
    try:
        text = urllib.request.urlopen(handle.url + "/metrics", timeout=10).read().decode()
    finally:
        handle.stop()
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples
               if s.name.startswith("pgvigil_backup_")}
    assert sorted(samples) == [
        "pgvigil_backup_configured", "pgvigil_backup_failures_total", "pgvigil_backup_last_duration_seconds",
        "pgvigil_backup_last_run_success", "pgvigil_backup_last_size_bytes",
        "pgvigil_backup_last_success_timestamp_seconds", "pgvigil_backup_last_verify_success",
        "pgvigil_backup_last_verify_timestamp_seconds", "pgvigil_backup_state_errors_total",
        "pgvigil_backup_verified_backup_timestamp_seconds"]
    assert all(s.labels == {"target": "primary"} for s in samples.values())
    assert samples["pgvigil_backup_last_verify_success"].value == 1.0


@pytest.mark.parametrize("command, has_dsn", [("run", True), ("verify", True), ("status", False), ("prune", False)])
def test_help_mentions_dsn_only_where_the_option_exists(command, has_dsn):
    code, out = pgvigil(command, "--help")
    assert code == 0
    assert ("--dsn" in out) == has_dsn, out


def test_run_prints_the_size_the_way_status_does(config_file, tmp_path):
    code, out = pgvigil("run", "--config", str(config_file))
    assert code == 0, out
    size = json.loads(pgvigil("status", "--config", str(config_file), "--json")[1])[0]["size_bytes"]
    shown = f"{size / 1024:.1f} KiB"
    assert f": {shown} in " in out
    assert shown in pgvigil("status", "--config", str(config_file))[1]


def test_run_as_a_pg_monitor_role_names_the_grant_it_needs(cluster, app_db, tmp_path):
    """The role the README recommends for monitoring reads statistics, not data: say so before dumping."""
    role = f"monitor_{dbname_of(app_db)}"
    cluster.execute(f"CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}")
    dsn = app_db.replace("postgresql://postgres@", f"postgresql://{role}@")
    assert dsn != app_db
    code, out = pgvigil("run", "--dir", str(tmp_path / "b"), "--dsn", dsn, "--target", "app")
    assert code == 1
    assert out.strip() == (
        f"Error: role {role} cannot read 8 table(s) or sequence(s) pg_dump must dump (permission denied for "
        '"Sales Data"."Quarterly Totals", public.customers, public.empty_table, public.events, public.events_2024 '
        f"and 3 more); give it read access: GRANT pg_read_all_data TO {role};  (pg_monitor reads statistics, "
        "not table data)")
    assert "snapshot" not in out and "Traceback" not in out
    status = json.loads(pgvigil("status", "--dir", str(tmp_path / "b"), "--json")[1])
    assert [(row["condition"], row["note"]) for row in status] == [("failed", out.strip()[len("Error: "):])]

    cluster.execute(f"GRANT pg_read_all_data TO {role}")
    code, out = pgvigil("run", "--dir", str(tmp_path / "b"), "--dsn", dsn, "--target", "app")
    assert code == 0, out


@pytest.mark.timeout(120)
def test_run_shows_the_servers_first_error(cluster, app_db, tmp_path):
    """A table another session holds exclusively, with a short lock_timeout: the user reads the lock
    timeout the server reported, not what failed after it (pg_dump's lost snapshot), and pg_dump,
    which waits for locks without a timeout, is stopped instead of waiting forever."""
    import psycopg

    holder = psycopg.connect(app_db)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")  # held until rollback
        dsn = app_db + "?options=-c%20lock_timeout%3D200"
        code, out = pgvigil("run", "--dir", str(tmp_path / "b"), "--dsn", dsn, "--target", "app")
    finally:
        holder.rollback()
        holder.close()
    assert code == 1
    message = out.strip()
    assert "canceling statement due to lock timeout" in message.splitlines()[0], message
    assert "snapshot" not in message and "Traceback" not in message
