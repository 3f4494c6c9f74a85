"""exporter/dev/offline_images.py without Docker: cache keys, the mirror, the CLI's errors.

The images themselves are built and run by tests/e2e/test_compose_live.py.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from exporter.dev import offline_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline_copy(tmp_path, monkeypatch):
    copy = tmp_path / "offline"
    shutil.copytree(offline_images.OFFLINE_DIR, copy)
    monkeypatch.setattr(offline_images, "OFFLINE_DIR", copy)
    return copy


def test_every_image_has_its_build_directory():
    for name in offline_images.IMAGES:
        assert (offline_images.OFFLINE_DIR / name / "Dockerfile").is_file(), name


def test_a_tag_changes_with_its_build_directory_only(offline_copy):
    before = {name: offline_images.tag_of(name) for name in ("debian", *offline_images.IMAGES)}
    assert all(tag.startswith(f"pgvigil-offline/{name}:") for name, tag in before.items())
    assert before == {name: offline_images.tag_of(name) for name in before}  # stable
    entrypoint = offline_copy / "postgres" / "docker-entrypoint.sh"
    entrypoint.write_text(entrypoint.read_text() + "\n# changed\n")
    after = {name: offline_images.tag_of(name) for name in before}
    assert {name for name in before if before[name] != after[name]} == {"postgres"}
    entrypoint.chmod(0o644)  # losing the x bit is a different image too
    assert offline_images.tag_of("postgres") != after["postgres"]


def test_a_changed_base_recipe_or_site_ca_rebuilds_everything(offline_copy, monkeypatch, tmp_path):
    names = ("debian", *offline_images.IMAGES)
    site = tmp_path / "ca"
    site.mkdir()
    monkeypatch.setattr(offline_images, "SITE_CA_DIR", site)
    empty = {name: offline_images.tag_of(name) for name in names}
    (site / "proxy.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    with_ca = {name: offline_images.tag_of(name) for name in names}
    assert all(empty[name] != with_ca[name] for name in names)
    monkeypatch.setattr(offline_images, "BASE_RECIPE", (*offline_images.BASE_RECIPE, "one more step"))
    assert all(offline_images.tag_of(name) != with_ca[name] for name in names)


@pytest.mark.parametrize("text, mirror", [
    ("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n", "http://mirror.example/debian"),
    ("deb [signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n", "http://mirror.example/debian"),
    ("deb http://security.example/debian-security bookworm-security main\n", offline_images.DEFAULT_MIRROR),
    ("", offline_images.DEFAULT_MIRROR),
])
def test_the_mirror_is_the_one_apt_uses(tmp_path, monkeypatch, text, mirror):
    monkeypatch.delenv("PGVIGIL_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text(text)
    (tmp_path / "sources.list.d").mkdir()
    assert offline_images.host_mirror((tmp_path / "sources.list", tmp_path / "sources.list.d")) == mirror
    monkeypatch.setenv("PGVIGIL_DEBIAN_MIRROR", "http://override.example/debian")
    assert offline_images.host_mirror((tmp_path / "sources.list",)) == "http://override.example/debian"


def test_the_env_file_names_the_latest_tags():
    env = offline_images.read_env_file()
    assert env["PGVIGIL_POSTGRES_IMAGE"] == "pgvigil-offline/postgres:latest"
    assert set(env.values()) == {f"pgvigil-offline/{name}:latest" for name in ("debian", *offline_images.IMAGES)}


def test_the_postgres_entrypoint_is_valid_bash_and_refuses_what_it_does_not_support():
    entrypoint = offline_images.OFFLINE_DIR / "postgres" / "docker-entrypoint.sh"
    assert subprocess.run(["bash", "-n", str(entrypoint)]).returncode == 0
    refused = subprocess.run(["bash", str(entrypoint), "postgres"], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "POSTGRES_HOST_AUTH_METHOD": "trust"}, timeout=30)
    assert refused.returncode == 1
    assert refused.stderr == "docker-entrypoint.sh: POSTGRES_HOST_AUTH_METHOD is not supported by the offline " \
                             "postgres image\n"


def test_a_failed_step_is_one_located_message():
    with pytest.raises(offline_images.OfflineImageError) as failed:
        offline_images.run(["sh", "-c", "echo apt said no >&2; exit 3"], "docker build of postgres")
    assert str(failed.value) == "docker build of postgres failed (exit 3):\napt said no\n"
    with pytest.raises(offline_images.OfflineImageError, match="^debootstrap: no-such-tool is not installed$"):
        offline_images.run(["no-such-tool"], "debootstrap")


def test_the_cli_without_docker_says_so(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert offline_images.main(["list"]) == 1
    assert capsys.readouterr().err == "offline-images: no docker command on PATH\n"
