#!/bin/sh
# Creates the stack's passwords on first start, so that no secret is ever written in
# docker-compose.yml or committed. Each service gets its own volume holding only what it needs:
#   postgres/  postgres_password, monitor_password  (the superuser's, and the one it gives the pgvigil role)
#   pgvigil/   pgvigil_dsn, pgbouncer_dsn           (connects as the pg_monitor role, never the superuser)
#   pgbouncer/ userlist.txt                         (the pgvigil role's password, for PgBouncer's console)
#   demo/      postgres_dsn                         (the demo workload creates its schema as the superuser)
#   grafana/   grafana_admin_password
# Existing files are kept: the passwords live as long as the volumes (`docker compose down -v`
# forgets them with the data). Files are 0400 and owned by the user the service runs as.
set -eu
cd "${SECRETS_DIR:-/secrets}"  # overridable so the tests can run it outside a container
umask 077
mkdir -p postgres pgvigil demo grafana pgbouncer

# Before this layout, one volume (now pgvigil's) held every secret: move them to their owners, so
# an existing database keeps its passwords and pgvigil no longer sees the superuser's.
for legacy in postgres/postgres_password postgres/monitor_password demo/postgres_dsn grafana/grafana_admin_password; do
  old="pgvigil/${legacy#*/}"
  if [ -s "$old" ] && [ ! -s "$legacy" ]; then mv "$old" "$legacy"; fi
  rm -f "$old"
done

new_password() {
  [ -s "$1" ] || tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >"$1"
}

new_password postgres/postgres_password
new_password postgres/monitor_password
new_password grafana/grafana_admin_password
# The DSNs; alphanumeric passwords need no URL escaping.
rm -f pgvigil/pgvigil_dsn pgvigil/pgbouncer_dsn demo/postgres_dsn pgbouncer/userlist.txt  # 0400 from the last start
printf 'postgresql://pgvigil:%s@postgres:5432/app\n' "$(cat postgres/monitor_password)" >pgvigil/pgvigil_dsn
printf 'postgresql://pgvigil:%s@pgbouncer:6432/pgbouncer\n' "$(cat postgres/monitor_password)" >pgvigil/pgbouncer_dsn
printf '"pgvigil" "%s"\n' "$(cat postgres/monitor_password)" >pgbouncer/userlist.txt
printf 'postgresql://postgres:%s@postgres:5432/app\n' "$(cat postgres/postgres_password)" >demo/postgres_dsn

# uid of each service's user: postgres:16 (postgres), pgvigil's Dockerfile, grafana/grafana,
# deploy/pgbouncer/Dockerfile.
owner() {
  [ "$(id -u)" -eq 0 ] || return 0  # the tests run this as themselves: the files are theirs already
  chown -R "$2:$2" "$1"
}
owner postgres 999
owner pgvigil 10001
owner demo 10001
owner grafana 472
owner pgbouncer 10002
chmod 0400 postgres/* pgvigil/* demo/* grafana/* pgbouncer/*
chmod 0700 postgres pgvigil demo grafana pgbouncer
echo "secrets ready, one volume per service (Grafana admin: docker compose exec grafana cat /run/secrets/grafana_admin_password)"
