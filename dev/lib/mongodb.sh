# shellcheck shell=bash
# shellcheck disable=SC2034  # mongodb_PORT, mongodb_timeout and CMD are read by dev/stack and common.sh
# shellcheck disable=SC2154  # PG_USER, PG_PASSWORD and postgres_PORT come from postgres.sh (sourced first)
# "mongodb": FerretDB v1 — a MongoDB wire-protocol server — on its PostgreSQL backend.
#
# FerretDB's data lives in the PostgreSQL database `ferretdb` (one PG schema per MongoDB database) of
# the stack's own postgres (see postgres.sh, which creates that database), so postgres must be up
# first; nothing of FerretDB is kept in $PRISM_STATE/data/mongodb. `dev/stack reset mongodb` drops and
# recreates the `ferretdb` database.
#
# The server is the small Go module in dev/ferretdb/ (go.mod, go.sum, main.go): a wrapper around the
# embeddable package github.com/FerretDB/FerretDB/ferretdb, because `go install` of FerretDB's own CLI
# builds a binary that panics at start (its generated version.txt is not in the module zip). The same
# binary has `ping` and `version` subcommands (one OP_MSG each: `ping`, which FerretDB answers only
# after checking PostgreSQL, and `buildInfo`) used for readiness and for the version line.
#
# Build: CGO off, -trimpath, GOTOOLCHAIN=local, -mod=readonly against the committed go.sum, into
# $PRISM_CACHE/mongodb/ferretdb-<key>/ferretdb, where <key> hashes go.mod, go.sum, main.go and the
# build flags below, so it rebuilds only when one of those changes. Modules come from GOPROXY into
# Go's own module cache. With the committed go.sum the build consults no checksum database. When
# changing dev/ferretdb/go.mod (`cd dev/ferretdb && GOTOOLCHAIN=local go mod tidy`), the go command
# verifies new modules against sum.golang.org, which it reaches *through* proxy.golang.org
# (…/sumdb/sum.golang.org/supported answers 200), so only the proxy needs to be reachable. If a proxy
# ever does not serve the sumdb, use GONOSUMDB=<module prefixes> (or GOSUMDB=off) for that one `go mod
# tidy`, and check the new go.sum lines by review.
#
# Build tag ferretdb_no_sqlite leaves out FerretDB's SQLite backend (modernc.org/sqlite is by far the
# slowest package to compile) since the stack only uses PostgreSQL.

mongodb_PORT=27017
mongodb_timeout=60
FERRETDB_PG_DATABASE=ferretdb
FERRETDB_SRC=$PRISM_ROOT/dev/ferretdb
FERRETDB_GO_MIN=1.24 # FerretDB v1.24's go.mod says `go 1.24`
FERRETDB_BUILD_FLAGS=(-trimpath -buildvcs=false -tags=ferretdb_no_sqlite)

ferretdb_key() {
  {
    (cd "$FERRETDB_SRC" && sha256sum go.mod go.sum main.go)
    printf '%s\n' "${FERRETDB_BUILD_FLAGS[*]}"
  } | sha256sum | cut -c1-16
}

mongodb_bin() {
  printf '%s/ferretdb-%s/ferretdb' "$(cache_dir mongodb)" "$(ferretdb_key)"
}

# Runs a client subcommand (ping, version) of the binary the running server was started from, so a
# rebuild while it runs cannot make `version` lie; falls back to the current build.
ferretdb_tool() {
  local pid exe
  if pid=$(service_pid mongodb) && exe=$(readlink "/proc/$pid/exe" 2>/dev/null) &&
    [[ $exe == */ferretdb || $exe == *"/ferretdb (deleted)" ]]; then
    "/proc/$pid/exe" "$@"
    return
  fi
  "$(mongodb_bin)" "$@"
}

ferretdb_build() {
  local bin=$1 dir tmp gover
  gover=$(require_go mongodb "$FERRETDB_GO_MIN" FerretDB) || exit 1
  dir=$(dirname "$bin")
  mkdir -p "$(dirname "$dir")"
  tmp=$(mktemp -d "$(dirname "$dir")/.build.XXXXXX")
  chmod 755 "$tmp"
  info "mongodb: building FerretDB (Go $gover; a first build downloads modules and compiles for a minute or two)"
  # GOFLAGS is replaced, not extended: -mod=readonly makes the build use exactly the committed go.sum.
  if ! (cd "$FERRETDB_SRC" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly GOWORK=off \
    go build "${FERRETDB_BUILD_FLAGS[@]}" -o "$tmp/ferretdb" .); then
    rm -rf "$tmp"
    die "mongodb: building dev/ferretdb failed"
  fi
  # Atomic publish; if a concurrent build won the race, keep its copy.
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
  # Drop builds of older sources.
  find "$(dirname "$dir")" -mindepth 1 -maxdepth 1 -name 'ferretdb-*' ! -path "$dir" -exec rm -rf {} +
}

mongodb_install() {
  local bin
  bin=$(mongodb_bin)
  [ -x "$bin" ] || ferretdb_build "$bin"
  [ -x "$bin" ] || die "mongodb: build produced no binary at $bin"
  postgres_ready >/dev/null 2>&1 ||
    die "mongodb: FerretDB keeps its data in PostgreSQL, which is not answering on $PRISM_HOST:$postgres_PORT; start it first: dev/stack up postgres mongodb"
}

mongodb_init() {
  # Creates the `ferretdb` database if it is missing (e.g. after a failed reset); idempotent.
  postgres_after_ready
}

mongodb_command() {
  CMD=("$(mongodb_bin)" serve
    -listen-addr "$PRISM_HOST:$mongodb_PORT"
    -postgresql-url "postgres://$PG_USER:$PG_PASSWORD@$PRISM_HOST:$postgres_PORT/$FERRETDB_PG_DATABASE"
    -log-level info)
}

mongodb_ready() {
  ferretdb_tool ping -addr "$PRISM_HOST:$mongodb_PORT" -timeout 2s
}

mongodb_version() {
  ferretdb_tool version -addr "$PRISM_HOST:$mongodb_PORT" -timeout 5s
}

mongodb_reset() {
  # Called after FerretDB has stopped. Its data is the `ferretdb` database in postgres.
  if postgres_ready >/dev/null 2>&1; then
    pg_psql -d postgres -c "DROP DATABASE IF EXISTS $FERRETDB_PG_DATABASE WITH (FORCE)"
    pg_psql -d postgres -c "CREATE DATABASE $FERRETDB_PG_DATABASE ENCODING 'UTF8'"
  elif [ ! -f "$(data_dir postgres)/PG_VERSION" ]; then
    info "mongodb: postgres has no data directory, so there is no FerretDB data to drop"
  else
    die "mongodb: postgres is not running, so FerretDB's data (PostgreSQL database '$FERRETDB_PG_DATABASE') was NOT dropped; run: dev/stack up postgres && dev/stack reset mongodb"
  fi
}
