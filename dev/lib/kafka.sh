# shellcheck shell=bash
# shellcheck disable=SC2034  # the *_PORT and *_timeout variables and CMD are read by dev/stack and common.sh
# Apache Kafka 4.x in KRaft mode, run from Maven Central jars: one broker (the default) or a 3-node cluster.
#
# dev/kafka/pom.xml names the jars; `mvn dependency:copy-dependencies` copies them (via ~/.m2) into
# $PRISM_CACHE/kafka/<version>-<hash of the pom>/libs, so another clone reuses them without the network.
# A node's configuration is rendered from a template into its data directory on every start; its storage
# is formatted once, with a cluster id kept beside it. Readiness is a real metadata request made with
# kcat, answered once the node lists itself as a live broker.
# dev/kafka/tool runs Kafka's command-line tools (topics, consumer-groups, ...) on the same jars.
#
# Single broker (default): service `kafka`, broker and controller in one JVM, node 1, a quorum of one
# voter; dev/kafka/server.properties -> .prism/data/kafka. Replication factor 1.
#
# Cluster (PRISM_KAFKA_BROKERS=3): services kafka-1, kafka-2 and kafka-3 (`kafka` names all three), each
# broker and controller in one JVM (512 MiB heap); a static quorum of three voters, which goes on while
# two of them run; dev/kafka/cluster.properties -> .prism/data/kafka-N. Topics get 3 replicas and need
# 2 in sync (min.insync.replicas=2, also for the offsets and transaction topics). The nodes start
# together: none answers before a quorum of them runs. One node stops and starts on its own:
# `dev/stack down kafka-2` (clean shutdown, leadership moves at once), `dev/stack kill kafka-2` (SIGKILL,
# a crash: the controller fences it after broker.session.timeout.ms, 9 s), `dev/stack up kafka-2`.
#
# Ports, each plus PRISM_KAFKA_PORT_OFFSET (default 0; e.g. to run a second Kafka beside this one,
# with its own PRISM_STATE):
#                        client     controller   PROXIED bound   PROXIED advertised
#   single   kafka       9092       9093         19092           29092
#   cluster  kafka-1     9092       9192         19092           29092
#            kafka-2     9093       9193         19093           29093
#            kafka-3     9094       9194         19094           29094
# PROXIED is a second client listener for fault injection (toxiproxy.sh): it advertises the port where
# a TCP proxy is meant to listen, the proxy's upstream being the PROXIED listener itself, so a client
# that bootstraps through the proxy (127.0.0.1:29092) is sent back to the proxy for every broker and
# all its traffic crosses it. Without such a proxy, the PROXIED ports serve no client. Replication and
# the controller quorum use their own listeners, never the proxy. Plain clients use the client ports.
#
# The mode: without PRISM_KAFKA_BROKERS, dev/stack keeps to the mode recorded in $PRISM_STATE/kafka/,
# else runs the single broker. Its files are written whenever dev/stack starts Kafka and kept across
# stops, so `dev/stack down kafka && dev/stack up kafka` restarts the same cluster with its data (an
# outage, not a switch); PRISM_KAFKA_BROKERS=1 or 3 switches, `dev/stack reset kafka` forgets. They are
# for programs too:
# .prism/kafka/brokers holds the number of brokers alone (1 or 3), .prism/kafka/mode key=value lines,
# e.g. for the cluster
#   mode=cluster
#   brokers=3
#   services=kafka-1 kafka-2 kafka-3
#   bootstrap=127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094
#   proxy_listen=127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094      (the PROXIED advertised addresses)
#   proxy_upstream=127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094    (the PROXIED bound addresses)
# (mode=single, brokers=1 and one address each for the single broker). Switching modes needs a stop
# in between: `dev/stack down kafka && PRISM_KAFKA_BROKERS=3 dev/stack up kafka`, and back with
# PRISM_KAFKA_BROKERS=1. The two modes keep
# separate data; `dev/stack reset kafka` drops both.

KAFKA_PORT_OFFSET=${PRISM_KAFKA_PORT_OFFSET:-0}
[[ $KAFKA_PORT_OFFSET =~ ^[0-9]{1,5}$ ]] || die "PRISM_KAFKA_PORT_OFFSET must be a number (got '$KAFKA_PORT_OFFSET')"
kafka_PORT=$((9092 + KAFKA_PORT_OFFSET))
kafka_CONTROLLER_PORT=$((9093 + KAFKA_PORT_OFFSET))
kafka_PROXIED_PORT=$((19092 + KAFKA_PORT_OFFSET))
kafka_PROXIED_ADVERTISED_PORT=$((29092 + KAFKA_PORT_OFFSET))
kafka_NODE_ID=1
kafka_timeout=90

# The cluster's nodes, 1..3 (node N is service kafka-N). Their ports are in the table above.
KAFKA_CLUSTER_NODES=(1 2 3)
kafka_node_port() { printf '%s' $((9091 + $1 + KAFKA_PORT_OFFSET)); }
kafka_node_controller_port() { printf '%s' $((9191 + $1 + KAFKA_PORT_OFFSET)); }
kafka_node_proxied_port() { printf '%s' $((19091 + $1 + KAFKA_PORT_OFFSET)); }
kafka_node_proxied_advertised_port() { printf '%s' $((29091 + $1 + KAFKA_PORT_OFFSET)); }
for _n in "${KAFKA_CLUSTER_NODES[@]}"; do
  printf -v "kafka_${_n}_PORT" '%s' "$(kafka_node_port "$_n")"
  printf -v "kafka_${_n}_timeout" '%s' 90
  # dev/stack calls kafka_N_HOOK for service kafka-N; each is kafka_node_HOOK N.
  for _hook in preflight install init command ready version reset; do
    eval "kafka_${_n}_${_hook}() { kafka_node_${_hook} ${_n}; }"
  done
done
unset _n _hook

KAFKA_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

kafka_src() { printf '%s/dev/kafka' "$PRISM_ROOT"; }

# The Kafka version named in the pom (its <kafka.version> property).
kafka_pom_version() {
  sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$(kafka_src)/pom.xml" | head -n 1
}

# $PRISM_CACHE/kafka/<version>-<first 12 hex digits of the pom's sha256>: one per pom content.
kafka_home() {
  local hash
  hash=$(sha256sum "$(kafka_src)/pom.xml" | cut -c1-12)
  printf '%s/%s-%s' "$(cache_dir kafka)" "$(kafka_pom_version)" "$hash"
}

kafka_java() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    printf '%s' "$JAVA_HOME/bin/java"
  else
    command -v java
  fi
}

kafka_install() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v kcat >/dev/null || apt_install kcat
  local home version libs tmp
  home=$(kafka_home)
  version=$(kafka_pom_version)
  [ -n "$version" ] || die "kafka: no <kafka.version> in $(kafka_src)/pom.xml"
  # The stamp is written last, only after a complete copy: its presence means nothing is missing.
  [ -f "$home/complete" ] && return 0

  command -v mvn >/dev/null || apt_install maven
  info "kafka: collecting Apache Kafka $version jars with Maven into $home"
  mkdir -p "$home"
  tmp=$(mktemp -d "$home/.libs.XXXXXX")
  # Maven's output is shown only if it fails (3.8's -q still prints stray colour codes).
  if ! mvn -B -q -f "$(kafka_src)/pom.xml" "$KAFKA_DEPENDENCY_PLUGIN:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$home/mvn.log" 2>&1; then
    sed 's/^/    /' "$home/mvn.log" >&2
    rm -rf "$tmp"
    die "kafka: Maven could not collect the jars of $(kafka_src)/pom.xml"
  fi
  [ -f "$tmp/kafka_2.13-$version.jar" ] || {
    rm -rf "$tmp"
    die "kafka: Maven finished but kafka_2.13-$version.jar is missing"
  }
  libs=$home/libs
  rm -rf "$libs"
  mv -T "$tmp" "$libs"
  sha256sum "$(kafka_src)/pom.xml" | cut -d' ' -f1 >"$home/complete"
}

kafka_log_dirs() { printf '%s/kraft' "$(data_dir kafka)"; }

# JVM options shared by the broker and the tools (storage formatter, dev/kafka/tool).
kafka_jvm_common() {
  KAFKA_JVM=(-Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$(kafka_src)/log4j2.properties"
    -cp "$(kafka_home)/libs/*")
}

# Escapes a value for the right-hand side of a sed s|...|...| command.
kafka_sed_escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

# Renders TEMPLATE into DIR/server.properties: kafka_render TEMPLATE DIR NODE_ID PORT CONTROLLER_PORT
# PROXIED_PORT PROXIED_ADVERTISED_PORT LOG_DIRS [VOTERS].
kafka_render() {
  local template=$1 dir=$2
  sed -e "s|@HOST@|$(kafka_sed_escape "$PRISM_HOST")|g" \
    -e "s|@NODE_ID@|$3|g" \
    -e "s|@PORT@|$4|g" \
    -e "s|@CONTROLLER_PORT@|$5|g" \
    -e "s|@PROXIED_PORT@|$6|g" \
    -e "s|@PROXIED_ADVERTISED_PORT@|$7|g" \
    -e "s|@LOG_DIRS@|$(kafka_sed_escape "$8")|g" \
    -e "s|@VOTERS@|$(kafka_sed_escape "${9:-}")|g" \
    "$template" >"$dir/server.properties.tmp"
  mv -f "$dir/server.properties.tmp" "$dir/server.properties"
}

kafka_render_config() {
  kafka_render "$(kafka_src)/server.properties" "$1" "$kafka_NODE_ID" "$kafka_PORT" "$kafka_CONTROLLER_PORT" \
    "$kafka_PROXIED_PORT" "$kafka_PROXIED_ADVERTISED_PORT" "$(kafka_log_dirs)"
}

# A Kafka Uuid: 16 random bytes, base64url without padding (22 characters). Kafka itself never hands out
# one that starts with '-' (it would read as a command-line flag), so neither do we.
kafka_random_uuid() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    case $id in -*) continue ;; esac
    printf '%s' "$id"
    return 0
  done
}

# Formats the storage of the node whose configuration is DIR/server.properties with the cluster id in
# DIR/cluster.id, unless LOG_DIRS holds a formatted storage already.
kafka_format() {
  local dir=$1 logdirs=$2
  # Formatted already: never format again (that would need the same cluster id, and could lose data).
  [ -f "$logdirs/meta.properties" ] && return 0
  echo "kafka: formatting $logdirs for cluster $(cat "$dir/cluster.id")"
  kafka_jvm_common
  # With controller.quorum.voters set, the format must not use --standalone / --initial-controllers.
  "$(kafka_java)" -Xmx256m "${KAFKA_JVM[@]}" kafka.tools.StorageTool format \
    --config "$dir/server.properties" --cluster-id "$(cat "$dir/cluster.id")"
}

kafka_init() {
  local dir
  dir=$(data_dir kafka)
  mkdir -p "$dir"
  kafka_render_config "$dir"
  [ -s "$dir/cluster.id" ] || kafka_random_uuid >"$dir/cluster.id"
  kafka_format "$dir" "$(kafka_log_dirs)"
}

# The java command line of a node: HEAP_MIN HEAP_MAX CONFIG.
kafka_jvm_command() {
  kafka_jvm_common
  # Flags of Kafka's kafka-server-start.sh / kafka-run-class.sh, with a smaller heap for a dev box.
  CMD=("$(kafka_java)" "-Xms$1" "-Xmx$2" -server
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
    "${KAFKA_JVM[@]}"
    kafka.Kafka "$3")
}

kafka_command() {
  kafka_jvm_command 512m 1g "$(data_dir kafka)/server.properties"
}

# A metadata request over the Kafka protocol to PORT; true once node NODE_ID is among the live brokers
# it lists. The TCP check first makes the probe return at once while the port is still closed (kcat
# would wait out its -m timeout).
kafka_probe() {
  port_open "$1" || return 1
  timeout 5 kcat -b "$PRISM_HOST:$1" -L -m 2 2>/dev/null |
    grep -q "broker $2 at "
}

kafka_ready() { kafka_probe "$kafka_PORT" "$kafka_NODE_ID"; }

# The version of the jars that service SVC runs on (its -cp), else of the installed ones.
kafka_version_of() {
  local pid cp='' jar
  if pid=$(service_pid "$1"); then
    cp=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n '/^-cp$/{n;p;q}')
  fi
  [ -n "$cp" ] || cp="$(kafka_home)/libs/*"
  for jar in "${cp%/\*}"/kafka_2.13-*.jar; do
    [ -f "$jar" ] || return 1
    jar=${jar##*/kafka_2.13-}
    printf 'Apache Kafka %s\n' "${jar%.jar}"
    return 0
  done
}

kafka_version() { kafka_version_of kafka; }

# ---- the mode ------------------------------------------------------------------------------------

kafka_mode_dir() { printf '%s/kafka' "$PRISM_STATE"; }

# The number of brokers in force: PRISM_KAFKA_BROKERS, else the recorded mode, else 1.
kafka_brokers() {
  local n=${PRISM_KAFKA_BROKERS:-}
  if [ -n "$n" ]; then
    case $n in
      1 | 3) printf '%s' "$n" ;;
      *) die "PRISM_KAFKA_BROKERS must be 1 or 3 (got '$n')" ;;
    esac
    return 0
  fi
  n=$(cat "$(kafka_mode_dir)/brokers" 2>/dev/null) || true
  case $n in
    3) printf 3 ;;
    *) printf 1 ;;
  esac
}

# Every Kafka service of either mode that runs now.
kafka_running() {
  local s
  for s in kafka "${KAFKA_CLUSTER_NODES[@]/#/kafka-}"; do
    if service_pid "$s" >/dev/null; then printf '%s\n' "$s"; fi
  done
}

# What dev/stack's ACTION (up, down, kill, status, logs, reset) applies to when given NAME (`kafka` or
# `kafka-N`): prints service names, or fails with the reason.
kafka_services() {
  local action=$1 name=${2:-kafka} brokers mode=() s
  brokers=$(kafka_brokers) || exit 1
  if [ "$brokers" = 3 ]; then mode=("${KAFKA_CLUSTER_NODES[@]/#/kafka-}"); else mode=(kafka); fi
  if [ "$name" = kafka ]; then
    case $action in
      down | kill | reset)
        # Also whatever runs of the other mode, so that `dev/stack down kafka` always stops all of Kafka.
        for s in $(kafka_running); do
          [[ " ${mode[*]} " == *" $s "* ]] || mode+=("$s")
        done
        ;;
    esac
    printf '%s\n' "${mode[*]}"
    return 0
  fi
  [[ " ${KAFKA_CLUSTER_NODES[*]/#/kafka-} " == *" $name "* ]] ||
    die "unknown service '$name' (Kafka is kafka, or kafka-1, kafka-2, kafka-3 in the 3-broker mode)"
  case $action in
    reset) die "$name: reset drops the data of every Kafka node at once: dev/stack reset kafka" ;;
    down | kill | logs) ;;
    *)
      [ "$brokers" = 3 ] ||
        die "$name is a node of the 3-broker cluster, which is not the Kafka in force (start it with: PRISM_KAFKA_BROKERS=3 dev/stack up kafka)"
      ;;
  esac
  printf '%s\n' "$name"
}

# The client addresses (host:port,...) of the Kafka in force.
kafka_bootstrap() {
  local n out=()
  if [ "$(kafka_brokers)" = 3 ]; then
    for n in "${KAFKA_CLUSTER_NODES[@]}"; do out+=("$PRISM_HOST:$(kafka_node_port "$n")"); done
  else
    out=("$PRISM_HOST:$kafka_PORT")
  fi
  (IFS=, && printf '%s' "${out[*]}")
}

# Records the mode of BROKERS (1 or 3).
kafka_record_mode() {
  local dir f n boot=() listen=() upstream=()
  dir=$(kafka_mode_dir)
  mkdir -p "$dir"
  f=$dir/mode
  if [ "$1" = 3 ]; then
    for n in "${KAFKA_CLUSTER_NODES[@]}"; do
      boot+=("$PRISM_HOST:$(kafka_node_port "$n")")
      listen+=("$PRISM_HOST:$(kafka_node_proxied_advertised_port "$n")")
      upstream+=("$PRISM_HOST:$(kafka_node_proxied_port "$n")")
    done
    printf 'mode=cluster\nbrokers=3\nservices=%s\n' "${KAFKA_CLUSTER_NODES[*]/#/kafka-}" >"$f.tmp"
  else
    boot=("$PRISM_HOST:$kafka_PORT")
    listen=("$PRISM_HOST:$kafka_PROXIED_ADVERTISED_PORT")
    upstream=("$PRISM_HOST:$kafka_PROXIED_PORT")
    printf 'mode=single\nbrokers=1\nservices=kafka\n' >"$f.tmp"
  fi
  (
    IFS=,
    printf 'bootstrap=%s\nproxy_listen=%s\nproxy_upstream=%s\n' "${boot[*]}" "${listen[*]}" "${upstream[*]}"
  ) >>"$f.tmp"
  mv -f "$f.tmp" "$f"
  printf '%s\n' "$1" >"$dir/brokers.tmp"
  mv -f "$dir/brokers.tmp" "$dir/brokers"
}

kafka_forget_mode() {
  local dir
  dir=$(kafka_mode_dir)
  rm -f "$dir/mode" "$dir/brokers"
  rmdir "$dir" 2>/dev/null || true
}

# Before a start: refuse to mix the modes (their ports overlap), and record the mode.
kafka_preflight() {
  local others
  others=$(kafka_running | grep -v '^kafka$' | tr '\n' ' ') || true
  [ -z "$others" ] ||
    die "kafka: the 3-broker cluster runs (${others% }); to go back to one broker: dev/stack down kafka && PRISM_KAFKA_BROKERS=1 dev/stack up kafka"
  kafka_record_mode 1
}

kafka_node_preflight() {
  ! service_pid kafka >/dev/null ||
    die "kafka-$1: the single broker runs; to switch to the cluster: dev/stack down kafka && PRISM_KAFKA_BROKERS=3 dev/stack up kafka"
  kafka_record_mode 3
}

# After `reset kafka` (every node stopped): the data of both modes goes.
kafka_reset() {
  local n
  rm -rf "$(data_dir kafka)"
  for n in "${KAFKA_CLUSTER_NODES[@]}"; do rm -rf "$(data_dir "kafka-$n")"; done
  kafka_forget_mode
}

# ---- one node of the cluster (N = 1..3) ---------------------------------------------------------

kafka_node_install() { kafka_install; }
kafka_node_reset() { kafka_reset; }

kafka_node_log_dirs() { printf '%s/kraft' "$(data_dir "kafka-$1")"; }

# The cluster's id: the one a node already has, else a new one.
kafka_cluster_id() {
  local n f
  for n in "${KAFKA_CLUSTER_NODES[@]}"; do
    f=$(data_dir "kafka-$n")/cluster.id
    if [ -s "$f" ]; then
      cat "$f"
      return 0
    fi
  done
  kafka_random_uuid
}

kafka_node_init() {
  local n=$1 dir voters=() m id
  dir=$(data_dir "kafka-$n")
  mkdir -p "$dir"
  for m in "${KAFKA_CLUSTER_NODES[@]}"; do voters+=("$m@$PRISM_HOST:$(kafka_node_controller_port "$m")"); done
  kafka_render "$(kafka_src)/cluster.properties" "$dir" "$n" "$(kafka_node_port "$n")" \
    "$(kafka_node_controller_port "$n")" "$(kafka_node_proxied_port "$n")" \
    "$(kafka_node_proxied_advertised_port "$n")" "$(kafka_node_log_dirs "$n")" "$(IFS=, && printf '%s' "${voters[*]}")"
  if [ ! -s "$dir/cluster.id" ]; then
    id=$(kafka_cluster_id)
    printf '%s' "$id" >"$dir/cluster.id"
  fi
  kafka_format "$dir" "$(kafka_node_log_dirs "$n")"
}

kafka_node_command() {
  kafka_jvm_command 256m 512m "$(data_dir "kafka-$1")/server.properties"
}

kafka_node_ready() { kafka_probe "$(kafka_node_port "$1")" "$1"; }

kafka_node_version() { printf '%s, node %s of 3\n' "$(kafka_version_of "kafka-$1")" "$1"; }
