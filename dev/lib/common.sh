# shellcheck shell=bash
# Shared helpers for dev/stack: paths, process supervision, probes, messages.
#
# Every service file in dev/lib/<service>.sh defines, for its service NAME:
#   NAME_PORT            the loopback port it listens on (variable)
#   NAME_install         installs what is missing; idempotent; downloads go to $PRISM_CACHE
#   NAME_init            optional: first-time data set-up (runs before start, must be idempotent)
#   NAME_command         fills the global array CMD with the foreground server command line
#   NAME_ready           returns 0 once the server answers a real request
#   NAME_after_ready     optional: idempotent set-up that needs the server (users, databases)
#   NAME_version         prints the server's version (called once it is ready)
#   NAME_timeout         optional: seconds to wait for readiness (variable, default 60)
#   NAME_reset           optional: drops data kept outside $PRISM_STATE/data/NAME (called after stop)
#   NAME_preflight       optional: checks before a start (runs even when the service already runs)
#   NAME_after_stop      optional: runs after `dev/stack down` or `kill` (also if it was not running)
#   NAME_services        optional: NAME stands for several services (see kafka.sh); prints them
# Data lives in $PRISM_STATE/data/NAME, the log in $PRISM_STATE/logs/NAME.log.
# A service named NAME-N (one node of a cluster, e.g. kafka-2) has its hooks and variables named
# NAME_N_... (kafka_2_ready, kafka_2_PORT): hook_name maps one to the other.

PRISM_ROOT=${PRISM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PRISM_STATE=${PRISM_STATE:-$PRISM_ROOT/.prism}
PRISM_CACHE=${PRISM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prism}
PRISM_HOST=127.0.0.1

export PRISM_ROOT PRISM_STATE PRISM_CACHE

if [ -t 1 ]; then
  C_RED=$'\e[31m' C_GREEN=$'\e[32m' C_YELLOW=$'\e[33m' C_DIM=$'\e[2m' C_OFF=$'\e[0m'
else
  C_RED='' C_GREEN='' C_YELLOW='' C_DIM='' C_OFF=''
fi

info() { printf '%s%s%s\n' "$C_DIM" "$*" "$C_OFF" >&2; }
warn() { printf '%swarning:%s %s\n' "$C_YELLOW" "$C_OFF" "$*" >&2; }
die() {
  printf '%serror:%s %s\n' "$C_RED" "$C_OFF" "$*" >&2
  exit 1
}

data_dir() { printf '%s/data/%s' "$PRISM_STATE" "$1"; }
log_file() { printf '%s/logs/%s.log' "$PRISM_STATE" "$1"; }
pid_file() { printf '%s/run/%s.pid' "$PRISM_STATE" "$1"; }
cache_dir() { printf '%s/%s' "$PRISM_CACHE" "$1"; }

ensure_dirs() {
  mkdir -p "$PRISM_STATE/data" "$PRISM_STATE/logs" "$PRISM_STATE/run" "$PRISM_CACHE"
}

# The pid of a running service, or nothing.
service_pid() {
  local f pid
  f=$(pid_file "$1")
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [ -n "$pid" ] && alive "$pid" || return 1
  printf '%s' "$pid"
}

# True while process $1 runs. A process that exited lingers as a zombie until it is
# reaped (here by PID 1, which can take a second): that does not count as running.
alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/$PRISM_HOST/$1") 2>/dev/null
}

# apt-get install, once per run, without starting the packages' own system services
# (the stack runs its own processes on its own data directories).
APT_UPDATED=
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
  info "installing Debian packages: ${missing[*]}"
  local policy=/usr/sbin/policy-rc.d created_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  if [ -z "$APT_UPDATED" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null || {
      [ -n "$created_policy" ] && rm -f "$policy"
      die "apt-get update failed"
    }
    APT_UPDATED=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  [ -n "$created_policy" ] && rm -f "$policy"
  [ $rc -eq 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
}

# Runs a hook function with `set -e` in force. (Called as `run_hook f || handle`, a plain
# `f || handle` would switch -e off inside f, so a failing step would not stop it.)
run_hook() {
  local rc=0
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  return $rc
}

# Starts CMD (filled by NAME_command) detached, output appended to the service's log.
start_daemon() {
  local svc=$1 log pid
  log=$(log_file "$svc")
  printf '\n==== %s start %s ====\n' "$svc" "$(date -u +%FT%TZ)" >>"$log"
  setsid "${CMD[@]}" >>"$log" 2>&1 </dev/null &
  pid=$!
  printf '%s\n' "$pid" >"$(pid_file "$svc")"
}

# Stops a service: SIGTERM, then SIGKILL after $2 seconds (default 30).
stop_daemon() {
  stop_daemons "${2:-30}" "$1"
}

# The signal that stops service SVC cleanly and promptly: its SVC_stop_signal, else TERM.
stop_signal() {
  local var
  var=$(hook_name "$1" stop_signal)
  printf '%s' "${!var:-TERM}"
}

# Stops services together: its stop signal (SIGTERM) to each, then waits up to GRACE seconds for all of them, then
# SIGKILL. (The nodes of a cluster stop together: the last one alone would wait for a quorum.)
stop_daemons() {
  local grace=$1 svc pid i pids=() left
  shift
  for svc in "$@"; do
    if pid=$(service_pid "$svc"); then
      kill -"$(stop_signal "$svc")" "$pid" 2>/dev/null || true
      pids+=("$svc:$pid")
    else
      rm -f "$(pid_file "$svc")"
    fi
  done
  for ((i = 0; i < grace * 10; i++)); do
    left=
    for pid in "${pids[@]}"; do
      if alive "${pid#*:}"; then left=1 && break; fi
    done
    [ -n "$left" ] || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    svc=${pid%%:*} pid=${pid#*:}
    if alive "$pid"; then
      warn "$svc (pid $pid) did not stop within ${grace}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
    rm -f "$(pid_file "$svc")"
  done
}

# Kills a service at once with SIGKILL, as a crash would: its whole process group (the server was
# started with setsid, so it leads one), then waits until it is gone.
kill_daemon() {
  local svc=$1 pid i
  pid=$(service_pid "$svc") || {
    rm -f "$(pid_file "$svc")"
    return 0
  }
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  rm -f "$(pid_file "$svc")"
}

# The name of hook HOOK (or variable) of service SVC: kafka-2 ready -> kafka_2_ready.
hook_name() {
  local svc=${1//-/_}
  printf '%s_%s' "$svc" "$2"
}

# Waits until NAME_ready succeeds; fails early if the process died.
wait_ready() {
  local svc=$1 timeout=$2 deadline
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if ! service_pid "$svc" >/dev/null; then
      return 2
    fi
    if "$(hook_name "$svc" ready)" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

# The last lines of a service's log, indented, for error messages.
log_tail() {
  local log
  log=$(log_file "$1")
  [ -f "$log" ] && tail -n "${2:-15}" "$log" | sed 's/^/    /' >&2
}

# Runs a command as an unprivileged system user (PostgreSQL refuses to run as root).
as_user() {
  local user=$1
  shift
  if [ "$(id -un)" = "$user" ]; then
    "$@"
  elif [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
  else
    die "need root (or to be user $user) to run: $*"
  fi
}

# Checks that Go >= MIN is here to build WHAT for service SVC; prints the version found.
require_go() {
  local svc=$1 min=$2 what=$3 gover
  command -v go >/dev/null ||
    die "$svc: Go >= $min is needed to build $what (Debian 12's golang package is too old; install Go from go.dev)"
  gover=$(GOTOOLCHAIN=local go env GOVERSION) || die "$svc: 'go env GOVERSION' failed"
  gover=${gover#go}
  if [ "$(printf '%s\n%s\n' "$min" "$gover" | sort -V | head -n1)" != "$min" ]; then
    die "$svc: Go $gover is too old to build $what; need >= $min"
  fi
  printf '%s' "$gover"
}
