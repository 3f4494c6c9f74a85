#!/bin/bash
# The offline postgres image's entrypoint. Its contract, the subset of the upstream postgres
# image's that docker-compose.yml relies on:
#   - `postgres [ARGS...]` (or just ARGS starting with `-`) runs the server as user postgres (uid 999),
#     listening on every interface of the container, with PGDATA=/var/lib/postgresql/data;
#   - on first start (an empty PGDATA) it runs initdb with the superuser POSTGRES_USER (default
#     postgres) whose password is POSTGRES_PASSWORD, or the content of POSTGRES_PASSWORD_FILE
#     (one of them is required), creates POSTGRES_DB (default: POSTGRES_USER), and runs
#     /docker-entrypoint-initdb.d/* in name order on a server listening on the socket only:
#     *.sh executable are run, other *.sh sourced, *.sql fed to psql (ON_ERROR_STOP);
#   - remote connections authenticate with scram-sha-256; local socket connections are trusted;
#   - any other command is run as given.
# Not supported (fails loudly rather than being ignored): POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD,
# *.sql.gz and friends in the init directory.
set -euo pipefail

for unsupported in POSTGRES_INITDB_ARGS POSTGRES_HOST_AUTH_METHOD POSTGRES_INITDB_WALDIR; do
  if [ -n "${!unsupported:-}" ]; then
    echo "docker-entrypoint.sh: $unsupported is not supported by the offline postgres image" >&2
    exit 1
  fi
done

if [ "${1:0:1}" = "-" ]; then
  set -- postgres "$@"
fi
if [ "$1" != "postgres" ]; then
  exec "$@"
fi

if [ "$(id -u)" = "0" ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
  fi
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "docker-entrypoint.sh: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (the superuser's password)" >&2
    exit 1
  fi
  # A failed first start leaves nothing behind, so the next start (restart: unless-stopped) runs the
  # init scripts again instead of serving a half-made database.
  trap 'echo "docker-entrypoint.sh: initialisation failed; PGDATA emptied" >&2
        pg_ctl -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
        find "$PGDATA" -mindepth 1 -delete' ERR
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA"
  rm -f "$pwfile"
  unset POSTGRES_PASSWORD
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

  # First-start server: the socket only, so no client sees a half-initialised database.
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" start
  psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --host /var/run/postgresql)
  if [ "$POSTGRES_DB" != "postgres" ]; then
    echo 'CREATE DATABASE :"db"' | "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB"
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then echo "running $f"; "$f"; else echo "sourcing $f"; . "$f"; fi ;;
      *.sql)
        echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
      */\*) ;;  # an empty directory
      *)
        echo "docker-entrypoint.sh: $f: not a *.sh or *.sql file, refusing to ignore it" >&2
        exit 1 ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  trap - ERR
  echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql
