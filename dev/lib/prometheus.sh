# shellcheck shell=bash
# Prometheus 2 from Debian's packages: scrapes the Prism services on loopback.
# Runs `prometheus` in the foreground with dashboards/prometheus.local.yml and its TSDB in
# its own data directory (not /var/lib/prometheus); SIGTERM shuts it down cleanly.

prometheus_PORT=9090
prometheus_timeout=60
PROM_SERVER=/usr/bin/prometheus

prom_config() { printf '%s/dashboards/prometheus.local.yml' "$PRISM_ROOT"; }
prom_url() { printf 'http://%s:%s%s' "$PRISM_HOST" "$prometheus_PORT" "$1"; }

prometheus_install() {
  [ -x "$PROM_SERVER" ] && command -v promtool >/dev/null && command -v curl >/dev/null && return 0
  apt_install prometheus curl
  [ -x "$PROM_SERVER" ] || die "prometheus: no $PROM_SERVER after installing prometheus"
}

prometheus_init() {
  mkdir -p "$(data_dir prometheus)"
  # Refuse to start on a broken configuration (the reason goes to the log).
  promtool check config "$(prom_config)"
}

prometheus_command() {
  CMD=("$PROM_SERVER"
    --config.file="$(prom_config)"
    --storage.tsdb.path="$(data_dir prometheus)"
    --storage.tsdb.retention.time=15d
    --web.listen-address="$PRISM_HOST:$prometheus_PORT"
    --web.external-url="$(prom_url /)"
    --log.level=info)
}

prometheus_ready() {
  curl -fsS -m 3 -o /dev/null "$(prom_url /-/ready)"
}

prometheus_version() {
  # {"status":"success","data":{"version":"2.42.0+ds",...}}: drop the Debian "+ds" suffix.
  curl -fsS -m 3 "$(prom_url /api/v1/status/buildinfo)" |
    sed -n 's/.*"version":"\([0-9][0-9.]*\)[^"]*".*/Prometheus \1/p'
}
