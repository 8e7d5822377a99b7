# shellcheck shell=bash
# MariaDB 10.11 from Debian's packages (MySQL protocol): the MySQL-flavoured store.
# Runs `mariadbd` in the foreground on its own data directory, ignoring /etc/mysql
# (--no-defaults), listening on 127.0.0.1 only, with its socket in $PRISM_STATE/run/.
# Accounts: root@localhost over the socket (unix_socket auth, for set-up), and
# prism/prism over TCP from 127.0.0.1 with all privileges (tests create their own databases).

mysql_PORT=3306
mysql_timeout=90
MY_USER=prism
MY_PASSWORD=prism
MY_DATABASE=prism
MY_SERVER=/usr/sbin/mariadbd

my_socket() { printf '%s/run/mysql.sock' "$PRISM_STATE"; }

mysql_install() {
  [ -x "$MY_SERVER" ] && command -v mariadb >/dev/null && command -v mariadb-install-db >/dev/null && return 0
  apt_install mariadb-server mariadb-client
  [ -x "$MY_SERVER" ] || die "mysql: no $MY_SERVER after installing mariadb-server"
}

# The SQL that makes the Prism account and database; safe to run again.
my_setup_sql() {
  local host
  printf "CREATE DATABASE IF NOT EXISTS \`%s\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n" "$MY_DATABASE"
  for host in 127.0.0.1 localhost; do
    printf "CREATE USER IF NOT EXISTS '%s'@'%s' IDENTIFIED BY '%s';\n" "$MY_USER" "$host" "$MY_PASSWORD"
    printf "ALTER USER '%s'@'%s' IDENTIFIED BY '%s';\n" "$MY_USER" "$host" "$MY_PASSWORD"
    printf "GRANT ALL PRIVILEGES ON *.* TO '%s'@'%s';\n" "$MY_USER" "$host"
  done
}

# The options given both to mariadb-install-db and to the server.
my_server_opts() {
  local dir=$1
  MY_OPTS=(--datadir="$dir"
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci
    --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=1
    --skip-log-bin --skip-name-resolve)
  if [ "$(id -u)" -eq 0 ]; then
    MY_OPTS+=(--user=root)
  fi
}

mysql_init() {
  local dir
  dir=$(data_dir mysql)
  # The marker is written last: a data directory without it is a failed attempt, made again.
  [ -f "$dir/.prism-initialised" ] && return 0
  service_pid mysql >/dev/null && return 0
  rm -rf "$dir"
  mkdir -p "$dir"
  my_server_opts "$dir"
  local who=()
  # root@localhost authenticates by unix socket; as a normal user, make a socket account for that user too.
  [ "$(id -u)" -eq 0 ] || who=(--user="$(id -un)" --auth-root-socket-user="$(id -un)")
  # (The Prism account is made by mysql_after_ready: bootstrap mode cannot run CREATE USER.)
  mariadb-install-db --no-defaults "${MY_OPTS[@]}" "${who[@]}" \
    --auth-root-authentication-method=socket --skip-test-db || return 1
  touch "$dir/.prism-initialised"
}

mysql_command() {
  local dir
  dir=$(data_dir mysql)
  my_server_opts "$dir"
  CMD=("$MY_SERVER" --no-defaults "${MY_OPTS[@]}"
    --bind-address="$PRISM_HOST" --port="$mysql_PORT" --socket="$(my_socket)"
    --pid-file="$dir/mariadbd.pid" --max-connections=200)
}

# Client as the Prism account, over TCP.
my_tcp() {
  MYSQL_PWD=$MY_PASSWORD mariadb --no-defaults --protocol=TCP -h "$PRISM_HOST" -P "$mysql_PORT" \
    -u "$MY_USER" --connect-timeout=3 --batch --skip-column-names "$@"
}

# Client as the administrative account, over the socket (unix_socket auth).
my_admin() {
  local u=root
  [ "$(id -u)" -eq 0 ] || u=$(id -un)
  mariadb --no-defaults --protocol=SOCKET -S "$(my_socket)" -u "$u" --connect-timeout=3 \
    --batch --skip-column-names "$@"
}

mysql_ready() {
  [ "$(my_tcp -e 'SELECT 1' 2>/dev/null)" = 1 ] && return 0
  # The Prism account may not exist yet (mysql_after_ready makes it): then the TCP port
  # must be open and the server must answer a query as the administrator.
  port_open "$mysql_PORT" && [ "$(my_admin -e 'SELECT 1' 2>/dev/null)" = 1 ]
}

mysql_after_ready() {
  my_setup_sql | my_admin
  [ "$(my_tcp -e 'SELECT 1')" = 1 ]
}

mysql_version() {
  local v
  v=$(my_tcp -e 'SELECT VERSION()' 2>/dev/null || my_admin -e 'SELECT VERSION()')
  # e.g. 10.11.19-MariaDB-0+deb12u1
  printf 'MariaDB %s\n' "${v%%-*}"
}

mysql_reset() {
  rm -f "$(my_socket)" "$(my_socket).lock"
}
