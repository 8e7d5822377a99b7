# shellcheck shell=bash
# PostgreSQL 15 from Debian's packages: the alternative event store, and FerretDB's backend.
# Runs as the `postgres` system user (PostgreSQL refuses root) on its own data directory.

postgres_PORT=5432
postgres_timeout=60
# Fast shutdown: sessions are disconnected and the server stops at once. SIGTERM is the
# "smart" shutdown, which waits for every client (FerretDB's pool, a running service) to
# leave: the server would go on serving them until the stop's grace time ran out.
postgres_stop_signal=INT
PG_USER=prism
PG_PASSWORD=prism
PG_DATABASE=prism

pg_bin() {
  local d
  for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [ -x "$d/postgres" ] && {
      printf '%s' "$d"
      return 0
    }
  done
  return 1
}

postgres_install() {
  pg_bin >/dev/null 2>&1 && command -v psql >/dev/null && return 0
  apt_install postgresql postgresql-client
  pg_bin >/dev/null || die "postgres: no server binary found after installing postgresql"
}

postgres_init() {
  local dir
  dir=$(data_dir postgres)
  [ -f "$dir/PG_VERSION" ] && return 0
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir"
    chmod 700 "$dir"
    # The server runs as `postgres`: it must be able to reach its data directory.
    as_user postgres test -x "$dir" ||
      die "postgres: user 'postgres' cannot reach $dir (a parent directory is not world-executable)"
  fi
  local pwfile
  pwfile=$(mktemp)
  printf '%s\n' "$PG_PASSWORD" >"$pwfile"
  chmod 644 "$pwfile"
  as_user postgres "$(pg_bin)/initdb" -D "$dir" -U "$PG_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8
  rm -f "$pwfile"
}

postgres_command() {
  local dir
  dir=$(data_dir postgres)
  CMD=(setpriv --reuid=postgres --regid=postgres --init-groups --
    "$(pg_bin)/postgres" -D "$dir"
    -c "listen_addresses=$PRISM_HOST" -c "port=$postgres_PORT"
    -c "unix_socket_directories=" -c "max_connections=200"
    -c "shared_buffers=256MB" -c "fsync=on" -c "logging_collector=off")
  if [ "$(id -u)" -ne 0 ]; then
    CMD=("${CMD[@]:4}")
  fi
}

pg_psql() {
  PGPASSWORD=$PG_PASSWORD psql -X -q -v ON_ERROR_STOP=1 -h "$PRISM_HOST" -p "$postgres_PORT" -U "$PG_USER" "$@"
}

postgres_ready() {
  pg_psql -d postgres -tAc 'SELECT 1' | grep -q 1
}

postgres_after_ready() {
  # One database for Prism, one for FerretDB (the MongoDB-protocol server stores its data in it).
  local db
  for db in "$PG_DATABASE" ferretdb; do
    if ! pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
      pg_psql -d postgres -c "CREATE DATABASE $db ENCODING 'UTF8'"
    fi
  done
}

postgres_version() {
  pg_psql -d postgres -tAc 'SHOW server_version' | awk '{print "PostgreSQL " $1}'
}
