#!/usr/bin/env bash
# The main job on a fresh Debian machine without Docker: a throwaway PostgreSQL with a small
# workload, pgvigil, and Prometheus + Alertmanager when installed, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
exec python3 -m exporter demo "$@"
