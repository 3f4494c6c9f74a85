"""Where PostgreSQL's server and client programs live on this machine."""
from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path


def find_bindir() -> Path:
    """Where initdb/pg_ctl live: $PGVIGIL_PG_BINDIR, Debian's layout, or PATH."""
    explicit = os.environ.get("PGVIGIL_PG_BINDIR")
    if explicit:
        return Path(explicit)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if debian:
        return Path(debian[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL server binaries not found; install postgresql or set PGVIGIL_PG_BINDIR")
