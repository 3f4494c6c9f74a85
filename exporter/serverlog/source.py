"""Where a target's log bytes come from: files beside the server, or the server itself through SQL.

Both list the log files (name, identity, size, mtime) and read a byte range of one. The identity
survives a rename: a file's device and inode (its first bytes are checked again when a saved position
is used, as inodes are reused), or, through SQL, its name (PostgreSQL names each log file by its start
time, and never renames one).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# The suffix of each format's files in log_directory (PostgreSQL names them so beside the stderr file).
SUFFIXES = {"csvlog": ".csv", "jsonlog": ".json"}


class SourceError(Exception):
    """The log cannot be read now; `.reason` is one of a bounded set (a label value, a log word)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LogFile:
    name: str
    identity: str
    size: int
    mtime: float


def wanted(name: str, fmt: str) -> bool:
    """Whether a file in the log directory holds this format's lines."""
    suffix = SUFFIXES.get(fmt)
    if suffix is not None:
        return name.endswith(suffix)
    return not name.endswith((".csv", ".json"))


class LogSource(Protocol):
    def files(self, fmt: str) -> list[LogFile]: ...

    def read(self, file: LogFile, offset: int, length: int) -> bytes: ...


class FileSource:
    """`path` is one log file, or a directory of them (log_directory): read with the filesystem."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def files(self, fmt: str) -> list[LogFile]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            raise SourceError("not_found") from None
        except PermissionError:
            raise SourceError("permission_denied") from None
        except OSError:
            raise SourceError("error") from None
        if not stat.S_ISDIR(info.st_mode):
            return [_file(str(self.path), info)]
        found = []
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if not wanted(entry.name, fmt):
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # deleted between the listing and now
                    if stat.S_ISREG(info.st_mode):
                        found.append(_file(entry.name, info))
        except PermissionError:
            raise SourceError("permission_denied") from None
        except OSError:
            raise SourceError("error") from None
        return found

    def read(self, file: LogFile, offset: int, length: int) -> bytes:
        path = self.path if file.name == str(self.path) else self.path / file.name
        try:
            # Non-blocking: a FIFO put in the file's place since the listing would block the open forever.
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
                info = os.fstat(fh.fileno())
                if _identity(info) != file.identity or not stat.S_ISREG(info.st_mode):
                    raise FileNotFoundError  # the name now holds another file: this one is gone from it
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            raise SourceError("deleted") from None
        except PermissionError:
            raise SourceError("permission_denied") from None
        except OSError:
            raise SourceError("error") from None


def _identity(info: os.stat_result) -> str:
    return f"{info.st_dev}:{info.st_ino}"


def _file(name: str, info: os.stat_result) -> LogFile:
    return LogFile(name=name, identity=_identity(info), size=info.st_size, mtime=info.st_mtime)


class ServerFiles(Protocol):
    """What SqlSource needs of the server (link.ServerLink)."""

    def ls_logdir(self) -> list[tuple[str, int, float]]: ...

    def read(self, path: str, offset: int, length: int) -> bytes: ...


class SqlSource:
    """The log read through the server: `pg_ls_logdir()` lists it, `pg_read_binary_file()` reads it
    (bytes: a line that is not valid in the database's encoding is no error)."""

    def __init__(self, link: ServerFiles, directory: str) -> None:
        self.link = link
        self.directory = directory  # log_directory, as the server resolves it

    def files(self, fmt: str) -> list[LogFile]:
        return [LogFile(name=name, identity=name, size=size, mtime=mtime)
                for name, size, mtime in self.link.ls_logdir() if wanted(name, fmt) and "/" not in name]

    def read(self, file: LogFile, offset: int, length: int) -> bytes:
        try:
            return self.link.read(f"{self.directory.rstrip('/')}/{file.name}", offset, length)
        except SourceError as exc:
            if exc.reason == "not_found":  # removed since the listing: rotation, not an unreadable log
                raise SourceError("deleted") from None
            raise
