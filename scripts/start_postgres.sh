#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 for the gradebook tests and print its
# SQLAlchemy URL on standard output (everything else goes to standard error):
#
#   export LLMCOURSE_TEST_POSTGRES_URL="$(scripts/start_postgres.sh)"
#
# Installs Debian's `postgresql` package when run as root, creates a cluster in $PG_TEST_DATA
# (default /tmp/llmcourse-postgres) owned by an unprivileged user (`postgres` when run as
# root, else the current user), starts it on port $PG_TEST_PORT (default 54329) listening on
# loopback only, and creates the test database. Safe to run again: it reuses a running server.
# Stop it with:  pg_ctl -D /tmp/llmcourse-postgres stop   (as the cluster's owner)
set -euo pipefail

DATA="${PG_TEST_DATA:-/tmp/llmcourse-postgres}"
PORT="${PG_TEST_PORT:-54329}"
DB=coursegrader_test
ROLE=coursegrader
PASSWORD=coursegrader-test-only
log() { echo "start_postgres: $*" >&2; }

if [ "$(id -u)" = 0 ]; then
    log "installing postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y postgresql >&2 || { apt-get update >&2 && apt-get install -y postgresql >&2; }
    OWNER=postgres
    as_owner() { runuser -u "$OWNER" -- "$@"; }
else
    OWNER="$(id -un)"
    as_owner() { "$@"; }
fi

BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
    log "no PostgreSQL server binaries found (install the Debian package 'postgresql' as root)"
    exit 1
fi

if [ ! -f "$DATA/PG_VERSION" ]; then
    log "creating a cluster in $DATA (owner $OWNER)"
    mkdir -p "$DATA"
    chown "$OWNER" "$DATA"
    chmod 700 "$DATA"
    pwfile="$(mktemp)"
    printf '%s\n' "$PASSWORD" > "$pwfile"
    chown "$OWNER" "$pwfile"
    as_owner "$BIN/initdb" -D "$DATA" -U "$ROLE" --pwfile="$pwfile" -A scram-sha-256 -E UTF8 --locale=C.UTF-8 >&2
    rm -f "$pwfile"
fi

if ! as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "starting the server on 127.0.0.1:$PORT"
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA" start >&2
fi

export PGPASSWORD="$PASSWORD"
psql_() { "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U "$ROLE" -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_ -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
    log "creating database $DB"
    psql_ -d postgres -c "CREATE DATABASE $DB" >&2
fi

echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
