# Sourced by demo.sh and test.sh (not run on its own): the repository's own virtual environment.
#
# Debian's and Ubuntu's python3 is "externally managed" (PEP 668): `pip install` into it fails
# with error: externally-managed-environment. So nothing is installed outside `.venv`, whichever
# python3 is on PATH (the distribution's, pyenv's, conda's): the first run creates it, later runs
# reuse it and skip pip while pyproject.toml is unchanged (so they also work offline).

VENV_DIR="$PWD/.venv"
apt_updated=""

apt_install() {  # apt_install PACKAGE...: as root or through sudo; `apt-get update` once per run
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -q
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
}

venv_create() {  # a working .venv (python and pip) of the python3 on PATH, made by python3 -m venv unless one is there
  local want have
  want="$(python3 -c 'import sys; print(sys.base_prefix, sys.version)' 2>/dev/null || true)"
  have="$("$VENV_DIR/bin/python" -c 'import sys; print(sys.base_prefix, sys.version)' 2>/dev/null || true)"
  if [ -n "$have" ] && [ "$have" = "$want" ] && "$VENV_DIR/bin/python" -m pip --version >/dev/null 2>&1; then
    return 0
  fi
  # None yet, a half-made one, or one of another python (a venv made by pyenv's is no proof for Debian's).
  rm -rf "$VENV_DIR"  # Debian's venv without ensurepip leaves python, no pip
  echo "creating the virtual environment $VENV_DIR with $(command -v python3)" >&2
  local failed
  if ! failed="$(python3 -m venv "$VENV_DIR" 2>&1)"; then
    rm -rf "$VENV_DIR"
    if ! command -v apt-get >/dev/null; then
      printf '%s\n' "$failed" >&2
      echo "python3 cannot create a virtual environment: install its venv module" >&2
      return 1
    fi
    echo "python3 has no venv module (Debian packages it apart): installing python3-venv" >&2
    apt_install python3-venv
    python3 -m venv "$VENV_DIR"
  fi
}

venv_install() {  # venv_install [EXTRA]: pip install -e .[EXTRA] unless done for this pyproject.toml
  local extra="${1:-}" spec="." want stamp
  [ -z "$extra" ] || spec=".[$extra]"
  stamp="$VENV_DIR/pgvigil-installed${extra:+-$extra}"
  want="$(sha256sum pyproject.toml)"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "installing pgvigil ($spec) into $VENV_DIR" >&2
  # TERM=dumb: on a terminal pip colours its warnings and errors even with -q (and --no-color leaves
  # bold), and ends them with a reset code that lands at the start of the next program's first line.
  TERM=dumb "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
  printf '%s\n' "$want" >"$stamp"
  # An install with extras includes the plain one.
  [ -z "$extra" ] || printf '%s\n' "$want" >"$VENV_DIR/pgvigil-installed"
}

venv_activate() {  # the venv's python, pip and pgvigil first on PATH, for this script and its children
  export VIRTUAL_ENV="$VENV_DIR"
  export PATH="$VENV_DIR/bin:$PATH"
  unset PYTHONHOME
}
