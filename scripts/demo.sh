#!/usr/bin/env bash
# The main job on a fresh Debian machine without Docker: a throwaway PostgreSQL with a small
# workload, pgvigil, and Prometheus + Alertmanager when installed, until Ctrl-C.
# Installs pgvigil into .venv (created on the first run; see scripts/venv.sh) and runs it from there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

venv_create
venv_install
venv_activate
exec python -m exporter demo "$@"
