"""The compose stack's images without Docker Hub: built from Debian packages, cached by content.

`debootstrap --variant=minbase bookworm` from a Debian mirror, `docker import`ed, is the base
(`pgvigil-offline/debian`, in place of debian:bookworm-slim); deploy/offline/<name>/Dockerfile
builds the stand-ins of busybox, python:3.11-slim, postgres:16 (Debian's PostgreSQL 15),
prom/prometheus and prom/alertmanager on it. deploy/offline/images.env names them for
docker-compose.yml's PGVIGIL_*_IMAGE variables.

Images are a cache: each is tagged with a hash of what it is built from (its build directory and
its base's hash), built only when that tag is missing, and removed only by `remove`.

    python3 -m exporter.dev.offline_images build [--mirror URL]   # scripts/offline-images.sh
    python3 -m exporter.dev.offline_images list | remove

Standard library only, so it runs with the machine's python3 before any virtual environment.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OFFLINE_DIR = ROOT / "deploy" / "offline"
REPOSITORY = "pgvigil-offline"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What the base image is made of: changing it changes the base's hash, so everything rebuilds.
BASE_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["bash"]')
# The site's own certificate authorities (Debian's place for them), trusted in the base image too:
# a TLS-inspecting proxy or a private package index signs with them, and pip in the pgvigil build
# would fail on PyPI without them.
SITE_CA_DIR = Path("/usr/local/share/ca-certificates")
BASE_RECIPE = (
    f"debootstrap --variant=minbase --include=ca-certificates {SUITE}",
    "site CA certificates copied from the host, update-ca-certificates",
    "debconf frontend Noninteractive",
    "apt lists and downloaded packages removed",
    *BASE_CHANGES,
)
# In build order; every one is FROM the base.
IMAGES = ("busybox", "python", "postgres", "prometheus", "alertmanager")
BUILD_TIMEOUT = 1800  # seconds, per step: a cold apt-get of Prometheus is the longest, a few minutes


IMAGES_ENV = OFFLINE_DIR / "images.env"


def read_env_file(path: Path = IMAGES_ENV) -> dict[str, str]:
    """KEY=VALUE lines of a compose env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


class OfflineImageError(Exception):
    """A step failed: the message names the step, its output's tail is attached."""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    tag: str          # pgvigil-offline/<name>:<hash>
    built: bool       # False when the cache had it
    seconds: float


def docker_env() -> dict[str, str]:
    # The legacy builder: the daemon's own, where no buildx plugin is installed (Debian's docker.io).
    return dict(os.environ, DOCKER_BUILDKIT="0")


# Commands run inside the new root filesystem see its paths only: the host's TMPDIR and friends do not exist there.
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def run(args: Sequence[str], what: str, timeout: float = BUILD_TIMEOUT, stdin: bytes | None = None,
        env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(list(args), input=stdin, capture_output=True, timeout=timeout,
                              env=docker_env() if env is None else env)
    except FileNotFoundError as exc:
        raise OfflineImageError(f"{what}: {args[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise OfflineImageError(f"{what}: no result after {timeout:.0f}s") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
        raise OfflineImageError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout.decode(errors="replace")


def site_certificates() -> list[Path]:
    return sorted(SITE_CA_DIR.rglob("*.crt")) if SITE_CA_DIR.is_dir() else []


def base_hash() -> str:
    digest = hashlib.sha256("\n".join(BASE_RECIPE).encode())
    for path in site_certificates():  # a new or changed site CA rebuilds everything
        digest.update(str(path.relative_to(SITE_CA_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image_hash(name: str) -> str:
    """Hash of the build directory's files (names and bytes) and of the base."""
    digest = hashlib.sha256(base_hash().encode())
    directory = OFFLINE_DIR / name
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(f"{path.stat().st_mode & 0o111:o}".encode() + b"\0")  # the entrypoint's x bit counts
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def tag_of(name: str) -> str:
    return f"{REPOSITORY}/{name}:{base_hash() if name == 'debian' else image_hash(name)}"


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True, env=docker_env()).returncode == 0


def host_mirror(sources: Sequence[Path] = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))) -> str:
    """The Debian mirror this machine's apt uses (an air-gapped site's own), else deb.debian.org."""
    if os.environ.get("PGVIGIL_DEBIAN_MIRROR"):
        return os.environ["PGVIGIL_DEBIAN_MIRROR"]
    files: list[Path] = []
    for source in sources:
        files.extend(sorted(source.glob("*.list")) + sorted(source.glob("*.sources")) if source.is_dir() else [source])
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for uri in re.findall(r"^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)", text, flags=re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def build_base(mirror: str, tag: str) -> None:
    if os.geteuid() != 0:
        raise OfflineImageError("debootstrap needs root: run the build as root (or with sudo)")
    with tempfile.TemporaryDirectory(prefix="pgvigil-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", "--include=ca-certificates", SUITE, str(rootfs), mirror],
            f"debootstrap {SUITE} from {mirror}")
        for certificate in site_certificates():
            target = rootfs / SITE_CA_DIR.relative_to("/") / certificate.relative_to(SITE_CA_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(certificate, target)
        run(["chroot", str(rootfs), "update-ca-certificates"], "update-ca-certificates", env=CHROOT_ENV)
        run(["chroot", str(rootfs), "debconf-set-selections"], "debconf frontend",
            stdin=b"debconf debconf/frontend select Noninteractive\n", env=CHROOT_ENV)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "var/cache/apt"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(
                ["docker", "import", *(arg for change in BASE_CHANGES for arg in ("--change", change)), "-", tag],
                stdin=tar.stdout, capture_output=True, timeout=BUILD_TIMEOUT, env=docker_env())
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(timeout=BUILD_TIMEOUT)
        if imported.returncode != 0 or tar.returncode != 0:
            raise OfflineImageError(f"docker import of the {SUITE} root filesystem failed: "
                                    f"{imported.stderr.decode(errors='replace')[-2000:]}")


def build(mirror: str | None = None, verbose: bool = False) -> list[BuiltImage]:
    """Every offline image, building only those whose content tag is missing; `:latest` moved to them."""
    results: list[BuiltImage] = []
    base = tag_of("debian")
    for name in ("debian", *IMAGES):
        tag = tag_of(name)
        started = time.monotonic()
        built = not image_exists(tag)
        if built:
            if verbose:
                print(f"building {tag}", file=sys.stderr)
            if name == "debian":
                build_base(mirror or host_mirror(), tag)
            else:
                run(["docker", "build", "--tag", tag, "--build-arg", f"BASE_IMAGE={base}", str(OFFLINE_DIR / name)],
                    f"docker build of {name}")
        run(["docker", "tag", tag, f"{REPOSITORY}/{name}:latest"], f"docker tag {name}")
        results.append(BuiltImage(name, tag, built, time.monotonic() - started))
    return results


def listed() -> list[tuple[str, int]]:
    """(repository:tag, size in bytes) of every pgvigil-offline image present."""
    out = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", f"{REPOSITORY}/*"], "docker images")
    rows = []
    for line in out.splitlines():
        ref, image_id = line.rsplit(" ", 1)
        size = run(["docker", "image", "inspect", "--format", "{{.Size}}", image_id], "docker image inspect")
        rows.append((ref, int(size.strip())))
    return sorted(rows)


def remove() -> list[str]:
    refs = [ref for ref, _ in listed()]
    if refs:
        run(["docker", "rmi", *refs], "docker rmi")
    return refs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offline-images", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build the missing images (root: debootstrap)")
    build_parser.add_argument("--mirror", help="Debian mirror for debootstrap (default: this machine's apt mirror)")
    commands.add_parser("list", help="the images present, with their sizes")
    commands.add_parser("remove", help="remove every pgvigil-offline image")
    args = parser.parse_args(argv)
    if shutil.which("docker") is None:
        print("offline-images: no docker command on PATH", file=sys.stderr)
        return 1
    try:
        if args.command == "build":
            for image in build(args.mirror, verbose=True):
                state = f"built in {image.seconds:.0f}s" if image.built else "cached"
                print(f"{image.tag} ({state})")
        elif args.command == "list":
            for ref, size in listed():
                print(f"{ref} {size / 1e6:.0f} MB")
        else:
            for ref in remove():
                print(f"removed {ref}")
    except OfflineImageError as exc:
        print(f"offline-images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
