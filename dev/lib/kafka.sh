# shellcheck shell=bash
# shellcheck disable=SC2034  # kafka_PORT, kafka_timeout and CMD are read by dev/stack and common.sh
# Apache Kafka 4.x in KRaft mode (broker and controller in one JVM), run from Maven Central jars.
#
# dev/kafka/pom.xml names the jars; `mvn dependency:copy-dependencies` copies them (via ~/.m2) into
# $PRISM_CACHE/kafka/<version>-<hash of the pom>/libs, so another clone reuses them without the network.
# dev/kafka/server.properties is rendered into the data directory on every start; the storage is
# formatted once, with a cluster id kept beside it. Clients talk to 127.0.0.1:9092, the controller
# listens on 127.0.0.1:9093. Readiness is a real metadata request made with kcat.
# dev/kafka/tool runs Kafka's command-line tools (topics, consumer-groups, ...) on the same jars.

kafka_PORT=9092
kafka_CONTROLLER_PORT=9093
kafka_NODE_ID=1
kafka_timeout=90
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

kafka_render_config() {
  local dir=$1
  sed -e "s|@HOST@|$(kafka_sed_escape "$PRISM_HOST")|g" \
    -e "s|@PORT@|$kafka_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$kafka_CONTROLLER_PORT|g" \
    -e "s|@LOG_DIRS@|$(kafka_sed_escape "$(kafka_log_dirs)")|g" \
    "$(kafka_src)/server.properties" >"$dir/server.properties.tmp"
  mv -f "$dir/server.properties.tmp" "$dir/server.properties"
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

kafka_init() {
  local dir logdirs
  dir=$(data_dir kafka)
  logdirs=$(kafka_log_dirs)
  mkdir -p "$dir"
  kafka_render_config "$dir"
  # Formatted already: never format again (that would need the same cluster id, and could lose data).
  [ -f "$logdirs/meta.properties" ] && return 0

  [ -s "$dir/cluster.id" ] || kafka_random_uuid >"$dir/cluster.id"
  echo "kafka: formatting $logdirs for cluster $(cat "$dir/cluster.id")"
  kafka_jvm_common
  # With controller.quorum.voters set, the format must not use --standalone / --initial-controllers.
  "$(kafka_java)" -Xmx256m "${KAFKA_JVM[@]}" kafka.tools.StorageTool format \
    --config "$dir/server.properties" --cluster-id "$(cat "$dir/cluster.id")"
}

kafka_command() {
  kafka_jvm_common
  # Flags of Kafka's kafka-server-start.sh / kafka-run-class.sh, with a smaller heap for a dev box.
  CMD=("$(kafka_java)" -Xms512m -Xmx1g -server
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
    "${KAFKA_JVM[@]}"
    kafka.Kafka "$(data_dir kafka)/server.properties")
}

# A metadata request over the Kafka protocol; ready once this broker lists itself. The TCP check first
# makes the probe return at once while the port is still closed (kcat would wait out its -m timeout).
kafka_ready() {
  port_open "$kafka_PORT" || return 1
  timeout 5 kcat -b "$PRISM_HOST:$kafka_PORT" -L -m 2 2>/dev/null |
    grep -q "broker $kafka_NODE_ID at "
}

# The version of the jars the running broker loaded (its -cp), else of the installed ones.
kafka_version() {
  local pid cp='' jar
  if pid=$(service_pid kafka); then
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
