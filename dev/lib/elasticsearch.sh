# shellcheck shell=bash
# The search read models' engine. Prism's users run Elasticsearch; locally this is a real
# OpenSearch 2.19 node (the Elasticsearch-compatible REST API, plain HTTP, no auth) on
# 127.0.0.1:9200, built from Maven Central jars, without Docker or a tarball:
#   dev/opensearch/pom.xml       the node's classpath (server + the distribution's modules)
#   dev/opensearch/src/...       a small launcher that starts org.opensearch.node.Node in the foreground
#   dev/opensearch/log4j2.properties   logging to stdout
# Jars and the compiled launcher live in $PRISM_CACHE/elasticsearch/<hash of pom + sources>/, so
# another clone with the same files reuses them without network. Node home, data and tmp live in
# .prism/data/elasticsearch. Single node, so indices get 0 replicas by default (green, not yellow).

# shellcheck disable=SC2034 # read by dev/stack
elasticsearch_PORT=9200
# shellcheck disable=SC2034 # read by dev/stack
elasticsearch_timeout=180 # start-to-ready is 7-15s here; much longer on a busy 2-core machine
ES_TRANSPORT_PORT=9300

es_src() { printf '%s/dev/opensearch' "$PRISM_ROOT"; }

# The cache directory for the current pom + launcher sources (content-addressed).
es_build_dir() {
  local hash
  hash=$(cd "$(es_src)" && find pom.xml src -type f \( -name pom.xml -o -name '*.java' \) | LC_ALL=C sort |
    xargs sha256sum | sha256sum | cut -c1-16)
  printf '%s/%s' "$(cache_dir elasticsearch)" "$hash"
}

es_url() { printf 'http://%s:%s%s' "$PRISM_HOST" "$elasticsearch_PORT" "${1:-/}"; }

es_curl() {
  curl -fsS --max-time "${ES_CURL_TIMEOUT:-10}" -H 'Content-Type: application/json' "$@"
}

elasticsearch_install() {
  local dir tmp src java_major
  dir=$(es_build_dir)
  [ -f "$dir/.installed" ] && return 0

  if ! command -v java >/dev/null || ! command -v javac >/dev/null; then
    apt_install openjdk-17-jdk-headless
  fi
  command -v mvn >/dev/null || apt_install maven
  command -v curl >/dev/null || apt_install curl
  java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ "${java_major:-0}" -ge 17 ] 2>/dev/null || die "elasticsearch: OpenSearch 2.19 needs Java 17 or newer (java on PATH is '${java_major:-?}')"

  src=$(es_src)
  mkdir -p "$(cache_dir elasticsearch)"
  tmp=$(mktemp -d "$(cache_dir elasticsearch)/.build.XXXXXX") || die "elasticsearch: cannot write to $(cache_dir elasticsearch)"
  info "elasticsearch: fetching the OpenSearch jars with Maven into $dir (first run only)"
  # Run Maven on a copy of the POM so that nothing is written into the checkout.
  cp "$src/pom.xml" "$tmp/pom.xml"
  if ! mvn -B -q -Dstyle.color=never -f "$tmp/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp/lib" >"$tmp/mvn.log" 2>&1; then
    sed 's/^/    /' "$tmp/mvn.log" | tail -n 30 >&2
    rm -rf "$tmp"
    die "elasticsearch: Maven could not fetch the OpenSearch jars (see above)"
  fi
  info "elasticsearch: compiling the launcher"
  local sources=()
  mapfile -t sources < <(find "$src/src" -type f -name '*.java' | LC_ALL=C sort)
  if ! javac --release 17 -nowarn -encoding UTF-8 -cp "$tmp/lib/*" -d "$tmp/classes" "${sources[@]}" >"$tmp/javac.log" 2>&1; then
    sed 's/^/    /' "$tmp/javac.log" >&2
    rm -rf "$tmp"
    die "elasticsearch: compiling the OpenSearch launcher failed"
  fi
  rm -f "$tmp/pom.xml" "$tmp/mvn.log" "$tmp/javac.log"
  (cd "$tmp/lib" && ls) | sed -n 's/^\(opensearch\|lucene-core\|log4j-core\)-\([0-9.]*\)\.jar$/\1 \2/p' >"$tmp/.installed"
  # Publish atomically; another clone may have finished the same build meanwhile (and be using it).
  if [ -f "$dir/.installed" ]; then
    rm -rf "$tmp"
  else
    rm -rf "$dir"
    mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
  fi
  [ -f "$dir/.installed" ] || die "elasticsearch: installing into $dir failed"
}

elasticsearch_init() {
  local home
  home=$(data_dir elasticsearch)
  mkdir -p "$home/config" "$home/data" "$home/logs" "$home/plugins" "$home/modules" "$home/tmp"
}

elasticsearch_command() {
  local dir home
  dir=$(es_build_dir)
  home=$(data_dir elasticsearch)
  # shellcheck disable=SC2034 # CMD is read by dev/stack
  CMD=(java
    -Xms512m -Xmx1g -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Xss1m
    -Djava.io.tmpdir="$home/tmp" -Djava.awt.headless=true -Dfile.encoding=UTF-8
    "-Djava.locale.providers=SPI,COMPAT" -Djna.nosys=true
    -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0
    -Dlog4j2.configurationFile="$(es_src)/log4j2.properties"
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true
    -cp "$dir/classes:$dir/lib/*" prism.devstack.OpenSearchNode
    path.home="$home" path.data="$home/data" path.logs="$home/logs"
    cluster.name=prism node.name=node-1 discovery.type=single-node
    network.host="$PRISM_HOST" http.port="$elasticsearch_PORT" transport.port="$ES_TRANSPORT_PORT"
    cluster.routing.allocation.disk.threshold_enabled=false)
}

elasticsearch_ready() {
  local body
  body=$(ES_CURL_TIMEOUT=5 es_curl "$(es_url '/_cluster/health?wait_for_status=yellow&timeout=1s')") || return 1
  [[ $body == *'"status":"green"'* || $body == *'"status":"yellow"'* ]]
}

elasticsearch_after_ready() {
  # One node: every new index gets 0 replicas unless it asks for more, so it is green, not yellow.
  # A cluster setting rather than a catch-all index template: a composable template on "*" at
  # priority 0 makes OpenSearch reject any other priority-0 template overlapping it (Prism's own
  # templates included), and it would not apply to indices that another template matches.
  es_curl -X PUT "$(es_url /_cluster/settings)" \
    -d '{"persistent":{"cluster.default_number_of_replicas":0}}' >/dev/null || return 1
  echo "dev/stack: set cluster.default_number_of_replicas=0"
}

elasticsearch_version() {
  local body distribution number
  body=$(ES_CURL_TIMEOUT=5 es_curl "$(es_url /)") || return 1
  distribution=$(printf '%s' "$body" | sed -n 's/.*"distribution" *: *"\([^"]*\)".*/\1/p' | head -n 1)
  number=$(printf '%s' "$body" | sed -n 's/.*"number" *: *"\([^"]*\)".*/\1/p' | head -n 1)
  case $distribution in
    opensearch) distribution=OpenSearch ;;
    '') distribution=Elasticsearch ;;
  esac
  printf '%s %s\n' "$distribution" "${number:-?}"
}
