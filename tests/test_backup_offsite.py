"""Off-site copies: a second directory, and S3 with server-side encryption against a local S3 server."""
from __future__ import annotations

import hashlib

import pytest
from backup_support import SEED_SQL, backup_metrics, dbname_of

from exporter.backup.dump import run_backup
from exporter.backup.offsite import DirectoryCopy, S3Copy, offsite_places
from exporter.backup.pgclient import BackupError
from exporter.backup.status import backup_statuses
from exporter.dev.throwaway import free_port


@pytest.fixture
def app_db(cluster, fresh_db):
    cluster.execute(SEED_SQL, dbname_of(fresh_db))
    return fresh_db


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on loopback: a real HTTP S3 API, no cloud account."""
    pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch, s3_endpoint):
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="pg-backups")
    return client


def test_directory_copy_is_complete_and_checked(app_db, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "offsite"
    entry = run_backup(app_db, "primary", local, progress=False, offsite=[DirectoryCopy(remote)])

    assert entry["offsite"] == [{"kind": "dir", "location": str(remote), "ok": True}]
    for name in entry["files"].values():
        assert (remote / name).read_bytes() == (local / name).read_bytes()
    assert sorted(p.name for p in remote.iterdir()) == sorted(entry["files"].values())  # no temporary left


def test_s3_copy_uses_server_side_encryption(app_db, tmp_path, s3_env, s3_endpoint):
    place = S3Copy({"bucket": "pg-backups", "prefix": "nightly/", "endpoint_url": s3_endpoint})
    entry = run_backup(app_db, "primary", tmp_path, progress=False, offsite=[place])

    key = f"nightly/primary/{entry['files']['dump']}"
    assert entry["offsite"] == [{"kind": "s3", "location": f"s3://pg-backups/{key}", "ok": True, "sse": "AES256"}]
    head = s3_env.head_object(Bucket="pg-backups", Key=key)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"] == {"sha256": entry["sha256"]}
    body = s3_env.get_object(Bucket="pg-backups", Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == entry["sha256"]
    listed = sorted(o["Key"] for o in s3_env.list_objects_v2(Bucket="pg-backups", Prefix="nightly/")["Contents"])
    assert listed == sorted(f"nightly/primary/{name}" for name in entry["files"].values())


def test_failed_offsite_copy_fails_the_run_but_keeps_the_local_backup(app_db, tmp_path, s3_env, s3_endpoint):
    place = S3Copy({"bucket": "no-such-bucket", "endpoint_url": s3_endpoint})
    with pytest.raises(BackupError) as info:
        run_backup(app_db, "primary", tmp_path, progress=False, offsite=[place])

    assert str(info.value).startswith("off-site copy to s3://no-such-bucket failed: ")
    [status] = backup_statuses(tmp_path)
    assert (status.condition, status.good) == ("unverified", True)  # the local copy is fine
    metrics = backup_metrics(tmp_path, "primary")
    assert metrics["pgvigil_backup_last_run_success"] == 0.0  # but 3-2-1 is broken: alert
    assert metrics["pgvigil_backup_failures_total"] == 1.0
    assert "pgvigil_backup_last_success_timestamp_seconds" not in metrics


@pytest.mark.parametrize("settings, message", [
    ({"prefix": "x"}, "backup.s3.bucket is required"),
    ({"bucket": "b", "sse": "none"}, "backup.s3.sse must be one of AES256, aws:kms, not none"),
    ({"bucket": "b", "acl": "public"}, "backup.s3: unknown keys acl (known: bucket, endpoint_url, kms_key_id, "
                                       "prefix, region, sse)"),
])
def test_s3_settings_are_checked_before_the_dump(settings, message):
    with pytest.raises(BackupError) as info:
        offsite_places(None, settings)
    assert str(info.value) == message


def test_offsite_dir_cannot_be_the_backup_dir(app_db, tmp_path):
    with pytest.raises(BackupError, match="the off-site directory is the backup directory itself"):
        run_backup(app_db, "primary", tmp_path, progress=False, offsite=[DirectoryCopy(tmp_path)])
