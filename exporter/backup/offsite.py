"""Off-site copies of a finished backup: a second directory, or S3-compatible storage.

The 3-2-1 rule wants one copy away from the database's machine. A directory copy (an NFS,
SMB or USB mount) is written like the backup itself, temporary name + fsync + rename, and
read back to check its sha256. An S3 copy needs the optional ``s3`` extra (boto3); objects
are stored with server-side encryption and the upload is refused when the store does not
confirm it. Credentials come from boto3's usual chain (environment, ~/.aws, instance role),
never from the pgvigil config.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from exporter.backup.pgclient import BackupError, same_path
from exporter.backup.state import fsync_dir
from exporter.backup.verify import sha256_of

S3_KEYS = {"bucket", "prefix", "endpoint_url", "region", "sse", "kms_key_id"}
SSE_MODES = {"AES256", "aws:kms"}


class DirectoryCopy:
    kind = "dir"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        return str(self.directory)

    def copy(self, source_dir: Path, files: Mapping[str, str], sha256: str, target: str) -> dict[str, Any]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if same_path(self.directory, source_dir):
                raise BackupError("the off-site directory is the backup directory itself")
            for name in files.values():
                tmp = self.directory / f".{name}.partial"
                shutil.copyfile(source_dir / name, tmp)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, self.directory / name)
            fsync_dir(self.directory)
            copied = sha256_of(self.directory / files["dump"])
        except OSError as exc:
            raise BackupError(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or self.directory}") from None
        if copied != sha256:
            raise BackupError(f"the copy in {self.directory} has sha256 {copied}, expected {sha256}")
        return {"kind": self.kind, "location": str(self.directory), "ok": True}


class S3Copy:
    kind = "s3"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        unknown = set(settings) - S3_KEYS
        if unknown:
            raise BackupError(f"backup.s3: unknown keys {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(S3_KEYS))})")
        if not settings.get("bucket"):
            raise BackupError("backup.s3.bucket is required")
        self.bucket = str(settings["bucket"])
        self.prefix = str(settings.get("prefix") or "").strip("/")
        self.endpoint_url = settings.get("endpoint_url")
        self.region = settings.get("region")
        self.sse = str(settings.get("sse") or "AES256")
        self.kms_key_id = settings.get("kms_key_id")
        if self.sse not in SSE_MODES:
            raise BackupError(f"backup.s3.sse must be one of {', '.join(sorted(SSE_MODES))}, not {self.sse}")

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, target: str, name: str) -> str:
        return "/".join(part for part in (self.prefix, target, name) if part)

    def client(self) -> Any:
        try:
            import boto3
        except ImportError:
            raise BackupError("S3 copies need boto3: pip install 'pgvigil[s3]'") from None
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region)

    def copy(self, source_dir: Path, files: Mapping[str, str], sha256: str, target: str) -> dict[str, Any]:
        client = self.client()
        extra: dict[str, Any] = {"ServerSideEncryption": self.sse, "Metadata": {"sha256": sha256}}
        if self.sse == "aws:kms" and self.kms_key_id:
            extra["SSEKMSKeyId"] = self.kms_key_id
        try:
            for name in files.values():
                client.upload_file(str(source_dir / name), self.bucket, self.key(target, name), ExtraArgs=extra)
            head = client.head_object(Bucket=self.bucket, Key=self.key(target, files["dump"]))
        except Exception as exc:  # botocore raises many unrelated types; all mean "the copy failed"
            raise BackupError(f"{type(exc).__name__}: {exc}") from None
        size = (source_dir / files["dump"]).stat().st_size
        if head.get("ContentLength") != size:
            raise BackupError(f"the stored object is {head.get('ContentLength')} bytes, expected {size}")
        if head.get("ServerSideEncryption") != self.sse:
            raise BackupError(f"the store did not confirm server-side encryption {self.sse}")
        return {"kind": self.kind, "location": f"s3://{self.bucket}/{self.key(target, files['dump'])}",
                "ok": True, "sse": self.sse}


def offsite_places(offsite_dir: Path | None, s3: Mapping[str, Any] | None) -> list[Any]:
    """The configured off-site destinations, validated before the dump starts."""
    places: list[Any] = []
    if offsite_dir is not None:
        places.append(DirectoryCopy(offsite_dir))
    if s3:
        places.append(S3Copy(s3))
    return places
