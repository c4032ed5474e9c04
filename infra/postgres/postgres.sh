#!/usr/bin/env bash
# A throwaway local PostgreSQL cluster for development and tests, run straight
# from Debian's server binaries (/usr/lib/postgresql/<ver>/bin). No Docker, and
# the Debian-managed cluster (pg_ctlcluster, port 5432) is neither used nor needed.
#
# Usage: infra/postgres/postgres.sh up|down|status|url
#
#   up      install the server binaries if missing (root + apt-get), initdb the
#           data dir if needed, start on 127.0.0.1:$SHAPING_PG_PORT, wait until
#           ready, create database "shaping" (and role "shaping"); a no-op if running
#   down    pg_ctl stop -m fast
#   status  exit 0 if running, 3 if not
#   url     print the SQLAlchemy URL: postgresql+psycopg://postgres@127.0.0.1:$PORT/shaping
#
# Environment:
#   SHAPING_PG_PORT      TCP port (default 55432); only 127.0.0.1 is listened on
#   SHAPING_PG_DATA      data directory (default $REPO/.cache/pg-data)
#   SHAPING_PG_BIN       directory with initdb/pg_ctl/... (default: newest
#                        /usr/lib/postgresql/*/bin, else from PATH)
#   SHAPING_OWNER_PID    optional: stop the server when this process exits
#                        (the test fixtures use it as a safety net)
#
# Authentication is "trust" for everyone connecting locally: this cluster is for
# development and tests only. fsync is off: a crash may corrupt it; `rm -rf` the
# data dir and run `up` again.
#
# Running as root: initdb and postgres refuse to run as root, so they run as the
# "postgres" system user (runuser), which must be able to reach the data dir.
# If the default data dir's parent is not traversable by "postgres" (e.g. the
# repository lives under /root), the cluster goes to /tmp/shaping-pg-$PORT/data
# instead, with its sockets in /tmp/shaping-pg-$PORT/run. `status`/`down` find it
# there by the same rule.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

PORT="${SHAPING_PG_PORT:-55432}"
DB=shaping
DEFAULT_DATA="$REPO/.cache/pg-data"
# Paths given relative to the caller's directory, made absolute before the `cd /` below.
absolute() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "$1"; fi; }
if [[ -n "${SHAPING_PG_DATA:-}" ]]; then SHAPING_PG_DATA="$(absolute "$SHAPING_PG_DATA")"; fi
if [[ -n "${SHAPING_PG_BIN:-}" ]]; then SHAPING_PG_BIN="$(absolute "$SHAPING_PG_BIN")"; fi
DATA="${SHAPING_PG_DATA:-$DEFAULT_DATA}"
URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"

say() { printf 'postgres: %s\n' "$*"; }
die() { printf 'postgres: ERROR: %s\n' "$*" >&2; exit 1; }

# Server processes must not inherit a working directory they cannot read. Everything below uses
# absolute paths ($HERE, $REPO, $DATA), so the script works by any path from any directory.
cd /

IS_ROOT=0
if [[ "$(id -u)" -eq 0 ]]; then IS_ROOT=1; fi

# --- binaries ------------------------------------------------------------------

find_bin() {
    if [[ -n "${SHAPING_PG_BIN:-}" ]]; then
        [[ -x "$SHAPING_PG_BIN/initdb" ]] || die "SHAPING_PG_BIN=$SHAPING_PG_BIN has no initdb"
        printf '%s' "$SHAPING_PG_BIN"
        return 0
    fi
    local dir
    dir="$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/initdb' 2>/dev/null \
        | sort -V | tail -n 1 | xargs -r dirname)"
    if [[ -n "$dir" ]]; then
        printf '%s' "$dir"
        return 0
    fi
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

install_server() {
    if [[ "$IS_ROOT" -ne 1 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb). Install them with: sudo apt-get install postgresql (or set SHAPING_PG_BIN)"
    fi
    say "PostgreSQL server binaries not found; installing Debian's 'postgresql' package"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    # The package creates and may start its own cluster (usually 15/main on
    # 5432). We do not use it; stop it so it does not hold memory and a port.
    if command -v pg_lsclusters >/dev/null 2>&1; then
        local ver name _port status _rest
        while read -r ver name _port status _rest; do
            if [[ "$status" == online* ]]; then
                say "stopping the Debian-managed cluster $ver/$name (not used by Shaping)"
                pg_ctlcluster "$ver" "$name" stop || true
            fi
        done < <(pg_lsclusters -h 2>/dev/null || true)
    fi
}

# --- locations -----------------------------------------------------------------

# Can the user that runs the server reach (search) this directory?
reachable_by_server_user() {
    if [[ "$IS_ROOT" -eq 1 ]]; then
        runuser -u postgres -- test -x "$1" 2>/dev/null
    else
        test -x "$1"
    fi
}

resolve_locations() {
    local parent
    parent="$(dirname "$DATA")"
    if [[ "$IS_ROOT" -eq 1 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' system user to run the server as"
        mkdir -p "$parent"
        if ! reachable_by_server_user "$parent"; then
            if [[ -n "${SHAPING_PG_DATA:-}" ]]; then
                die "user 'postgres' cannot reach $parent (SHAPING_PG_DATA=$SHAPING_PG_DATA); make the path traversable or choose another directory"
            fi
            parent="/tmp/shaping-pg-$PORT"
            DATA="$parent/data"
            mkdir -p "$parent"
            chmod 755 "$parent"
        fi
    else
        mkdir -p "$parent"
    fi
    if [[ "$DATA" == "/tmp/shaping-pg-$PORT/data" ]]; then
        SOCKDIR="/tmp/shaping-pg-$PORT/run"
    else
        SOCKDIR="$parent/pg-socket-$PORT"
    fi
    # A Unix socket path must fit in 107 bytes ("/.s.PGSQL.<port>" is appended).
    if (( ${#SOCKDIR} > 80 )); then
        SOCKDIR="/tmp/shaping-pg-socket-$PORT"
    fi
    LOGFILE="$DATA/server.log"
    WATCH_PIDFILE="$(dirname "$DATA")/.pg-watchdog-$PORT.pid"
}

# Peek where the cluster is without creating anything (for status/down).
resolve_locations_readonly() {
    local parent
    parent="$(dirname "$DATA")"
    if [[ "$IS_ROOT" -eq 1 && -z "${SHAPING_PG_DATA:-}" ]] \
        && { [[ ! -d "$parent" ]] || ! reachable_by_server_user "$parent"; } \
        && [[ -d "/tmp/shaping-pg-$PORT/data" ]]; then
        DATA="/tmp/shaping-pg-$PORT/data"
    fi
    LOGFILE="$DATA/server.log"
    WATCH_PIDFILE="$(dirname "$DATA")/.pg-watchdog-$PORT.pid"
}

as_server_user() {
    if [[ "$IS_ROOT" -eq 1 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

is_running() {
    [[ -f "$DATA/PG_VERSION" ]] || return 1
    as_server_user "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

psql_admin() {
    "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres "$@"
}

# --- subcommands -----------------------------------------------------------------

initialise() {
    mkdir -p "$DATA"
    chmod 700 "$DATA"
    if [[ "$IS_ROOT" -eq 1 ]]; then chown postgres:postgres "$DATA"; fi
    say "creating a new cluster in $DATA"
    if ! as_server_user "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-locale \
        --no-sync >"$(dirname "$DATA")/initdb-$PORT.log" 2>&1; then
        cat "$(dirname "$DATA")/initdb-$PORT.log" >&2
        die "initdb failed"
    fi
    rm -f "$(dirname "$DATA")/initdb-$PORT.log"
    cat >>"$DATA/postgresql.conf" <<'EOF'

# --- added by infra/postgres/postgres.sh: a throwaway dev/test cluster ---
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
log_min_messages = warning
log_line_prefix = '%m [%p] '
# Port and socket directory, rewritten on every `up`:
include_if_exists = 'shaping-runtime.conf'
EOF
}

up() {
    BIN="$(find_bin)" || { install_server; BIN="$(find_bin)" || die "no initdb even after installing"; }
    resolve_locations

    if is_running; then
        say "already running on 127.0.0.1:$PORT (data $DATA)"
        ensure_database
        say "url: $URL"
        return 0
    fi
    if port_open "$PORT"; then
        die "port 127.0.0.1:$PORT is already in use by another server (not the cluster in $DATA)"
    fi

    [[ -f "$DATA/PG_VERSION" ]] || initialise
    if [[ "$IS_ROOT" -eq 1 && "$(stat -c %U "$DATA")" != postgres ]]; then
        chown -R postgres:postgres "$DATA"
    fi

    mkdir -p "$SOCKDIR"
    if [[ "$IS_ROOT" -eq 1 ]]; then chown postgres:postgres "$SOCKDIR"; fi
    cat >"$DATA/shaping-runtime.conf" <<EOF
# Written by infra/postgres/postgres.sh on every 'up'.
port = $PORT
unix_socket_directories = '$SOCKDIR'
EOF
    if [[ "$IS_ROOT" -eq 1 ]]; then chown postgres:postgres "$DATA/shaping-runtime.conf"; fi

    say "starting on 127.0.0.1:$PORT (data $DATA, sockets $SOCKDIR)"
    local started=$SECONDS
    if ! as_server_user "$BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 -s start; then
        echo "----- last lines of $LOGFILE -----" >&2
        tail -n 30 "$LOGFILE" >&2 || true
        die "PostgreSQL did not start"
    fi
    local i
    for i in $(seq 1 120); do
        "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 2 && break
        sleep 0.25
    done
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 2 \
        || { tail -n 30 "$LOGFILE" >&2 || true; die "PostgreSQL is not ready on 127.0.0.1:$PORT"; }
    ensure_database
    if [[ -n "${SHAPING_OWNER_PID:-}" ]]; then
        start_watchdog "$SHAPING_OWNER_PID"
    fi
    say "up on 127.0.0.1:$PORT after $((SECONDS - started)) s"
    say "url: $URL"
}

ensure_database() {
    psql_admin <<'SQL' >/dev/null
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shaping') THEN
        CREATE ROLE shaping LOGIN;
    END IF;
END
$$;
SQL
    if [[ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]]; then
        psql_admin -c "CREATE DATABASE $DB OWNER shaping" >/dev/null
        say "created database $DB"
    fi
}

# stop_watchdog comes from here; start_watchdog below replaces the shared one because a
# PostgreSQL server is watched through its postmaster.pid, not its pid.
source "$HERE/../lib/watchdog.sh"

# Stop the server if the owning process (e.g. a pytest session) disappears
# without running its teardown.
start_watchdog() {
    # shellcheck disable=SC2016
    setsid bash -c '
        owner=$1 data=$2 bin=$3 root=$4
        stop() {
            if [ "$root" = 1 ]; then runuser -u postgres -- "$bin/pg_ctl" -D "$data" -m immediate -s stop
            else "$bin/pg_ctl" -D "$data" -m immediate -s stop; fi
        }
        while [ -f "$data/postmaster.pid" ]; do
            if ! kill -0 "$owner" 2>/dev/null; then stop; exit 0; fi
            sleep 1
        done' _ "$1" "$DATA" "$BIN" "$IS_ROOT" </dev/null >/dev/null 2>&1 &
    echo $! >"$WATCH_PIDFILE"
}


down() {
    BIN="$(find_bin)" || { say "not installed, so not running"; return 0; }
    resolve_locations_readonly
    stop_watchdog postmaster.pid
    if ! is_running; then
        say "not running (data $DATA)"
        return 0
    fi
    say "stopping (data $DATA)"
    as_server_user "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 -s stop \
        || as_server_user "$BIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 -s stop
    say "stopped"
}

status() {
    BIN="$(find_bin)" || { say "not installed"; return 3; }
    resolve_locations_readonly
    if is_running; then
        if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 2; then
            say "running on 127.0.0.1:$PORT, accepting connections (data $DATA)"
        else
            say "server in $DATA is running but not accepting connections on 127.0.0.1:$PORT"
        fi
        return 0
    fi
    say "not running (data $DATA)"
    return 3
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    url) printf '%s\n' "$URL" ;;
    *)
        echo "usage: $0 up|down|status|url" >&2
        exit 2
        ;;
esac
