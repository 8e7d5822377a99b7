# shellcheck shell=bash
# Redis 7 from Debian's packages: caches, idempotency keys, rate limits.
# Runs `redis-server` in the foreground with its settings on the command line (no
# /etc/redis/redis.conf), on 127.0.0.1 only, with AOF (fsync every second) and RDB
# snapshots in its own data directory, so data survives `down` / `up`.

redis_PORT=6379
redis_timeout=60
REDIS_SERVER=/usr/bin/redis-server

redis_install() {
  [ -x "$REDIS_SERVER" ] && command -v redis-cli >/dev/null && return 0
  apt_install redis-server redis-tools
  [ -x "$REDIS_SERVER" ] || die "redis: no $REDIS_SERVER after installing redis-server"
}

redis_init() {
  mkdir -p "$(data_dir redis)"
}

redis_command() {
  CMD=("$REDIS_SERVER"
    --bind "$PRISM_HOST" --port "$redis_PORT" --protected-mode yes
    --daemonize no --supervised no --pidfile "" --logfile ""
    --dir "$(data_dir redis)"
    --appendonly yes --appendfsync everysec --appendfilename appendonly.aof
    --save "3600 1 300 100 60 10000" --dbfilename dump.rdb
    --databases 16 --maxclients 1000)
}

rd_cli() {
  redis-cli -h "$PRISM_HOST" -p "$redis_PORT" "$@"
}

redis_ready() {
  [ "$(rd_cli PING 2>/dev/null)" = PONG ]
}

redis_version() {
  rd_cli INFO server | tr -d '\r' | sed -n 's/^redis_version:/Redis /p'
}
