"""Writing a bundle all or nothing: every file lands, or none does and the output directory is as it was.

Each file is first written next to its destination under a hidden temporary name, so the final
step is only renames within one file system; a full disk or a read-only directory fails during
the first step, and what it wrote (files and the directories it created) is removed.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Mapping

from exporter.bundle.rules import BundleError


def write_all(out_dir: Path, files: Mapping[str, str]) -> list[Path]:
    """Write `files` (path relative to `out_dir` -> text); raises BundleError naming the file that failed."""
    created: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    try:
        for relative, text in files.items():
            target = out_dir / relative
            _make_dirs(target.parent, created)
            temporary = target.with_name(f".{target.name}.pgvigil-tmp-{os.getpid()}")
            staged.append((temporary, target))
            _write(temporary, target, text)
        for temporary, target in staged:
            os.replace(temporary, target)
    except BundleError:
        _undo(staged, created)
        raise
    except OSError as exc:
        _undo(staged, created)
        raise BundleError(f"cannot write {exc.filename or out_dir}: {exc.strerror}") from None
    return [target for _, target in staged]


def _write(temporary: Path, target: Path, text: str) -> None:
    try:
        temporary.write_text(text, encoding="utf-8")
    except OSError as exc:  # a write's ENOSPC carries no file name; the temporary one would confuse
        raise BundleError(f"cannot write {target}: {exc.strerror}") from None


def _make_dirs(directory: Path, created: list[Path]) -> None:
    missing = []
    while not directory.exists():
        if directory.is_symlink():  # mkdir would say only "File exists"
            raise BundleError(f"cannot write into {directory}: it is a symbolic link to {os.readlink(directory)}, "
                              "which does not exist; create that directory or give another")
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)


def _undo(staged: list[tuple[Path, Path]], created: list[Path]) -> None:
    for temporary, _ in staged:
        with contextlib.suppress(OSError):
            temporary.unlink()
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()
