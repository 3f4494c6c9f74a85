#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what it needs (apt: promtool, amtool;
# pip: pgvigil with its test extras, into .venv), then runs pytest with this script's arguments.
# CI runs exactly this (.ci/run), as root on a fresh Debian 12 clone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v amtool >/dev/null || need_apt+=(prometheus-alertmanager)
command -v prometheus-postgres-exporter >/dev/null || need_apt+=(prometheus-postgres-exporter)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need_apt+=(pgbouncer)
# PostgreSQL 15 is the machine's own server; 13, 14, 16, 17 come from npm tarballs (exporter/dev/servers.py)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql postgresql-contrib)
command -v npm >/dev/null || need_apt+=(npm)
# tests/e2e/test_compose_live.py: a Docker engine, compose (v2 plugin or Debian's v1) and debootstrap for
# the stack's images built from Debian packages (Docker Hub is not reachable from CI)
command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || need_apt+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
# VictoriaMetrics, vmagent and vmalert: the fleet topology's engines (tests/e2e/test_metricsql.py, test_fleet.py)
command -v vmalert >/dev/null || need_apt+=(victoria-metrics)
# pg_wait_sampling: the sampler's profile source (tests/scrape/test_waitsampling_postgres.py)
[ -e /usr/lib/postgresql/15/lib/pg_wait_sampling.so ] || need_apt+=(postgresql-15-pg-wait-sampling)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
fi

venv_create
venv_install test
venv_activate

# Static checks first, from the same venv (settings in pyproject.toml): lint, then types.
echo "ruff: lint" >&2
ruff check exporter tests bench
echo "mypy: type check of exporter/" >&2
mypy

exec python -m pytest "$@"
