"""Retention keeps what it promises: the newest, the newest verified, and nothing it did not make."""
from __future__ import annotations

import time

import pytest
from backup_support import SEED_SQL, backup_metrics, dbname_of

from exporter.backup.dump import run_backup
from exporter.backup.pgclient import BackupError
from exporter.backup.prune import DAY, plan, prune
from exporter.backup.state import StateFile
from exporter.backup.verify import verify_backup

NOW = 1_750_000_000.0


def entry(name: str, age_days: float, status: str = "complete", verified: bool | None = None,
          target: str = "primary") -> dict:
    finished = NOW - age_days * DAY
    return {"name": name, "target": target, "status": status, "started": finished - 5, "finished": finished,
            "files": {}, "verify": None if verified is None else {"success": verified}}


def kept(decisions) -> list[str]:
    return [d.backup for d in decisions if d.keep]


@pytest.mark.parametrize("keep_days, keep_last, expected", [
    (None, 1, ["d0", "d5v"]),                # newest + newest verified, whatever keep_last says
    (None, 3, ["d0", "d1", "d2x", "d5v"]),   # a failed verification does not protect d2x, the count does
    (3, None, ["d0", "d1", "d2x", "d5v"]),
    (0, None, ["d0", "d5v"]),
    (1.5, 2, ["d0", "d1", "d5v"]),           # either rule keeps a backup
    (30, None, ["d0", "d1", "d2x", "d5v", "d9", "d20"]),
])
def test_plan_keeps_the_promised_backups(keep_days, keep_last, expected):
    state = {"backups": [entry("d9", 9), entry("d0", 0.1), entry("d5v", 5, verified=True), entry("d1", 1),
                         entry("d2x", 2, verified=False), entry("d20", 20)], "targets": {}}
    assert kept(plan(state, keep_days, keep_last, NOW)) == expected


def test_plan_is_per_target_and_drops_failed_runs():
    state = {"backups": [entry("a1", 1), entry("a0", 0), entry("b3", 3, target="replica"),
                         entry("b9", 9, target="replica"), entry("a-failed", 0.5, status="failed")], "targets": {}}
    decisions = {d.backup: (d.keep, d.reason) for d in plan(state, None, 1, NOW)}
    assert decisions == {"a0": (True, "newest backup"), "a1": (False, "1.0 days old, beyond retention"),
                         "a-failed": (False, "failed run"), "b3": (True, "newest backup"),
                         "b9": (False, "9.0 days old, beyond retention")}


@pytest.mark.parametrize("keep_days, keep_last, message", [
    (None, None, "give --keep-days, --keep-last or both (or set them in the config's backup: section)"),
    (None, 0, "--keep-last must be at least 1"),
    (-1, None, "--keep-days cannot be negative"),
])
def test_prune_refuses_unsafe_policies(tmp_path, keep_days, keep_last, message):
    with pytest.raises(BackupError) as info:
        prune(tmp_path, keep_days, keep_last)
    assert str(info.value) == message


def test_prune_on_real_backups_never_touches_foreign_files(cluster, fresh_db, tmp_path):
    cluster.execute(SEED_SQL, dbname_of(fresh_db))
    made = [run_backup(fresh_db, "primary", tmp_path, progress=False) for _ in range(4)]
    # Age them: 30, 20, 10 and 0 days old. The 20-day-old one is the only verified one.
    with StateFile(tmp_path).update() as state:
        for backup, age in zip(state["backups"], (30, 20, 10, 0)):
            backup["finished"] = time.time() - age * DAY
    assert verify_backup(tmp_path, name=made[1]["name"]).success
    foreign = {
        "manual-before-upgrade.dump": b"keep me",
        "primary-20200101T000000Z.dump": b"looks like ours, is not in the state",
        "primary-20200101T000000Z.manifest.json": b"{}",
        "notes.txt": b"ops notes",
    }
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "sub").mkdir()
    metrics_before = backup_metrics(tmp_path, "primary")

    dry = prune(tmp_path, keep_days=None, keep_last=1, dry_run=True)
    assert sorted(d.backup for d in dry if not d.keep) == [made[0]["name"], made[2]["name"]]
    assert all((tmp_path / b["files"]["dump"]).exists() for b in made)

    decisions = prune(tmp_path, keep_days=None, keep_last=1)

    assert {d.backup: d.reason for d in decisions if d.keep} == {
        made[3]["name"]: "newest backup", made[1]["name"]: "newest verified backup"}
    for backup, survives in zip(made, (False, True, False, True)):
        for name in backup["files"].values():
            assert (tmp_path / name).exists() == survives, name
    for name, data in foreign.items():
        assert (tmp_path / name).read_bytes() == data
    assert (tmp_path / "sub").is_dir()
    assert [b["name"] for b in StateFile(tmp_path).read()["backups"]] == [made[1]["name"], made[3]["name"]]
    # Retention is not a backup event: the metrics do not move.
    assert backup_metrics(tmp_path, "primary") == metrics_before
