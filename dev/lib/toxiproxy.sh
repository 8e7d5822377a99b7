# shellcheck shell=bash
# shellcheck disable=SC2034  # toxiproxy_PORT, toxiproxy_timeout and CMD are read by dev/stack and common.sh
# Toxiproxy (Shopify's TCP proxy with injectable faults) for the chaos tests: only its HTTP API runs,
# on 127.0.0.1:8474. It starts with no proxy; tests create, break and delete their own proxies through
# the API (POST /proxies, POST /proxies/NAME/toxics, DELETE /proxies/NAME, POST /reset). Proxies live
# in the server's memory only: `dev/stack down toxiproxy` (or a restart) drops them, and there is no
# data to keep, so $PRISM_STATE/data/toxiproxy stays empty.
#
# Nothing else in the stack depends on it. Kafka advertises a PROXIED listener for it (see kafka.sh):
# a proxy listening on 127.0.0.1:29092 with upstream 127.0.0.1:19092 carries all of a client's traffic.
#
# Build: `go install github.com/Shopify/toxiproxy/v2/cmd/server@<pinned version>` from the Go module
# proxy, CGO off, -trimpath, GOTOOLCHAIN=local, with the module's own go.mod and go.sum (the go command
# checks them against the checksum database, which it reaches through the proxy), into
# $PRISM_CACHE/toxiproxy/toxiproxy-<version>-<key>/toxiproxy-server, <key> hashing the build flags.
# The version is stamped into the binary as upstream's release builds do, so GET /version tells it.

toxiproxy_PORT=8474
toxiproxy_timeout=30
TOXIPROXY_MODULE=github.com/Shopify/toxiproxy/v2
TOXIPROXY_VERSION=v2.12.0
TOXIPROXY_GO_MIN=1.23 # v2.12.0's go.mod says `go 1.23.0`
TOXIPROXY_BUILD_FLAGS=(-trimpath -buildvcs=false
  "-ldflags=-s -w -X $TOXIPROXY_MODULE.Version=${TOXIPROXY_VERSION#v}")

toxiproxy_key() {
  printf '%s\n' "$TOXIPROXY_MODULE@$TOXIPROXY_VERSION" "${TOXIPROXY_BUILD_FLAGS[*]}" | sha256sum | cut -c1-12
}

toxiproxy_bin() {
  printf '%s/toxiproxy-%s-%s/toxiproxy-server' "$(cache_dir toxiproxy)" "$TOXIPROXY_VERSION" "$(toxiproxy_key)"
}

toxiproxy_url() { printf 'http://%s:%s%s' "$PRISM_HOST" "$toxiproxy_PORT" "$1"; }

toxiproxy_build() {
  local bin=$1 dir tmp gover
  gover=$(require_go toxiproxy "$TOXIPROXY_GO_MIN" Toxiproxy) || exit 1
  dir=$(dirname "$bin")
  mkdir -p "$(dirname "$dir")"
  tmp=$(mktemp -d "$(dirname "$dir")/.build.XXXXXX")
  chmod 755 "$tmp"
  info "toxiproxy: building Toxiproxy $TOXIPROXY_VERSION (Go $gover; a first build downloads modules)"
  # Outside any module (cd to the new directory), so no go.work or go.mod around can interfere;
  # GOFLAGS is replaced, not extended.
  if ! (cd "$tmp" && GOBIN="$tmp" CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS='' GOWORK=off \
    go install "${TOXIPROXY_BUILD_FLAGS[@]}" "$TOXIPROXY_MODULE/cmd/server@$TOXIPROXY_VERSION"); then
    rm -rf "$tmp"
    die "toxiproxy: building $TOXIPROXY_MODULE/cmd/server@$TOXIPROXY_VERSION failed"
  fi
  mv "$tmp/server" "$tmp/toxiproxy-server"
  # Atomic publish; if a concurrent build won the race, keep its copy.
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
  # Drop builds of other versions or flags.
  find "$(dirname "$dir")" -mindepth 1 -maxdepth 1 -name 'toxiproxy-*' ! -path "$dir" -exec rm -rf {} +
}

toxiproxy_install() {
  command -v curl >/dev/null || apt_install curl
  local bin
  bin=$(toxiproxy_bin)
  [ -x "$bin" ] || toxiproxy_build "$bin"
  [ -x "$bin" ] || die "toxiproxy: build produced no binary at $bin"
}

toxiproxy_command() {
  # No -config: the server starts with no proxy. (Its -seed flag has no effect in this version.)
  # LOG_LEVEL=info logs proxies and toxics as they change; debug would add every API request.
  CMD=(env LOG_LEVEL=info "$(toxiproxy_bin)" -host "$PRISM_HOST" -port "$toxiproxy_PORT")
}

toxiproxy_ready() {
  curl -fsS -m 3 -o /dev/null "$(toxiproxy_url /version)"
}

toxiproxy_version() {
  # {"version": "2.12.0"}
  curl -fsS -m 3 "$(toxiproxy_url /version)" |
    sed -n 's/.*"version": *"\([^"]*\)".*/Toxiproxy \1/p'
}
