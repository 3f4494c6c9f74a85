#!/bin/sh
# Runs once, when the postgres data volume is initialised: the role pgvigil connects as. It has
# pg_monitor only (every session, lock and statistics view, no data), as the README recommends.
set -eu
monitor_password="$(cat "${PGVIGIL_SECRETS:-/run/secrets}/monitor_password")"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v password="$monitor_password" <<'SQL'
CREATE ROLE pgvigil LOGIN PASSWORD :'password';
GRANT pg_monitor TO pgvigil;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
