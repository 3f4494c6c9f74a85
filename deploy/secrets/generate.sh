#!/bin/sh
# Creates the stack's passwords on first start, inside the `pgvigil-secrets` named volume, so that no
# secret is ever written in docker-compose.yml or committed. Existing files are kept: the
# passwords live as long as the volume (`docker compose down -v` forgets them with the data).
set -eu
cd "${SECRETS_DIR:-/secrets}"  # overridable so the tests can run it outside a container
umask 022  # read by the postgres, pgvigil and grafana users; only mounted into those services

new_password() {
  [ -s "$1" ] || tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >"$1"
}

new_password postgres_password
new_password monitor_password
new_password grafana_admin_password
# The DSN pgvigil reads with `dsn_file:`; alphanumeric passwords need no URL escaping.
printf 'postgresql://pgvigil:%s@postgres:5432/app\n' "$(cat monitor_password)" >pgvigil_dsn
# The demo workload's DSN: it creates the demo schema, so it connects as the superuser.
printf 'postgresql://postgres:%s@postgres:5432/app\n' "$(cat postgres_password)" >postgres_dsn
echo "secrets ready in the pgvigil-secrets volume (Grafana admin: docker compose exec grafana cat /run/pgvigil-secrets/grafana_admin_password)"
