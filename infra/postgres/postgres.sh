#!/usr/bin/env bash
# A throwaway local PostgreSQL cluster for development and tests, run straight
# from Debian's server binaries (/usr/lib/postgresql/<ver>/bin). No Docker, and
# the Debian-managed cluster (pg_ctlcluster, port 5432) is neither used nor needed.
#
# Usage: infra/postgres/postgres.sh up|down|status|url [ROLE]|credentials|rotate ROLE
#
#   up           install the server binaries if missing (root + apt-get), initdb the
#                data dir if needed, start on 127.0.0.1:$SHAPING_PG_PORT, wait until
#                ready, create database "shaping" and the roles below (passwords set from
#                their files on every `up`); a no-op but for the roles if running
#   down         pg_ctl stop -m fast
#   status       exit 0 if running, 3 if not
#   url [ROLE]   print the SQLAlchemy URL of a role, without its password:
#                postgresql+psycopg://shaping_projector@127.0.0.1:$PORT/shaping
#                (ROLE: projector, the default, or reader); the password is in the role's
#                file, which the settings read through SHAPING_DB_PASSWORD_FILE
#   credentials  print the roles, their URLs and env files, and how to use them
#   rotate ROLE  a new password for ROLE (projector, reader or postgres), set on the running
#                server, then written to its file; services using it need a restart
#   compose-env [FILE]  make the untracked env file of docker-compose.yml (default $REPO/.env,
#                mode 0600) with a random password for each role, keeping those it has
#
# Passwords and least privilege (docs/security.md, "PostgreSQL"). Every connection, TCP or
# Unix socket, authenticates with scram-sha-256 (pg_hba.conf is rewritten on every `up`;
# password_encryption = scram-sha-256); nobody is trusted. On the first `up` the script
# creates $SHAPING_PG_DATA/secrets (mode 0700, every file 0600) with a random password per
# role (openssl rand):
#   postgres           the bootstrap superuser: only this script uses it (admin.pgpass),
#                      never a service
#   shaping_projector  the projector: creates and writes the status tables (CREATE on the
#                      database and its schema public; owns what it creates)
#   shaping_reader     the operator's read commands and Grafana: CONNECT, USAGE on public and
#                      SELECT on every table the projector makes (default privileges); nothing
#                      else (no INSERT/UPDATE/DELETE, no CREATE, no TEMP)
# and an env file per service role (projector.env, reader.env: SHAPING_DB_URL without the
# password and SHAPING_DB_PASSWORD_FILE), for `set -a; . FILE; set +a` or
# SHAPING_CREDENTIALS_FILE=FILE. A cluster made by an older version of this script (trust
# authentication, no secrets) is refused with a message: it only holds projections; remove it.
#
# Environment:
#   SHAPING_PG_PORT      TCP port (default 55432); only 127.0.0.1 is listened on
#   SHAPING_PG_DATA      data directory (default $REPO/.cache/pg-data)
#   SHAPING_PG_BIN       directory with initdb/pg_ctl/... (default: newest
#                        /usr/lib/postgresql/*/bin, else from PATH)
#   SHAPING_OWNER_PID    optional: stop the server when this process exits
#                        (the test fixtures use it as a safety net)
#
# fsync is off: this cluster is for development and tests; a crash may corrupt it. `rm -rf`
# the data dir and run `up` again (the projector rebuilds the tables from the Kafka log).
#
# Running as root: initdb and postgres refuse to run as root, so they run as the
# "postgres" system user (runuser), which must be able to reach the data dir.
# If the default data dir's parent is not traversable by "postgres" (e.g. the
# repository lives under /root), the cluster goes to /tmp/shaping-pg-$PORT/data
# instead, with its sockets in /tmp/shaping-pg-$PORT/run. `status`/`down` find it
# there by the same rule. The secrets stay owned by the user running the script.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

PORT="${SHAPING_PG_PORT:-55432}"
DB=shaping
DEFAULT_DATA="$REPO/.cache/pg-data"
# Paths given relative to the caller's directory, made absolute before the `cd /` below.
absolute() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "$1"; fi; }
CALLER_DIR="$PWD"
absolute_from_caller() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$CALLER_DIR" "$1"; fi; }
if [[ -n "${SHAPING_PG_DATA:-}" ]]; then SHAPING_PG_DATA="$(absolute "$SHAPING_PG_DATA")"; fi
if [[ -n "${SHAPING_PG_BIN:-}" ]]; then SHAPING_PG_BIN="$(absolute "$SHAPING_PG_BIN")"; fi
DATA="${SHAPING_PG_DATA:-$DEFAULT_DATA}"
SUPERUSER=postgres
PROJECTOR_ROLE=shaping_projector
READER_ROLE=shaping_reader

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
    apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q postgresql
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
    SECRETS="$DATA/secrets"
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
    SECRETS="$DATA/secrets"
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

# The bootstrap superuser's session: its password from a 0600 pgpass file (libpq ignores one
# that others may read), never on a command line.
psql_admin() {
    PGPASSFILE="$SECRETS/admin.pgpass" "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -w \
        -h 127.0.0.1 -p "$PORT" -U "$SUPERUSER" -d postgres "$@"
}

# --- secrets ---------------------------------------------------------------------

new_secret() { openssl rand -hex 24; }

# write_secret FILE VALUE: a 0600 file holding VALUE, replaced atomically.
write_secret() {
    (
        umask 077
        printf '%s\n' "$2" >"$1.partial"
    )
    mv "$1.partial" "$1"
}

# read_secret FILE: its password, refused unless only its owner may read it and it is one
# of ours (letters and digits: it goes into SQL and a pgpass line).
read_secret() {
    local mode value
    [[ -s "$1" ]] || die "missing password file $1"
    mode="$(stat -c '%a' "$1")"
    [[ "$mode" =~ ^[0-7]?[0-7]00$ ]] || die "$1 is readable by others (mode $mode); chmod 600 $1"
    value="$(tr -d '\n' <"$1")"
    [[ "$value" =~ ^[A-Za-z0-9]{16,128}$ ]] || die "$1 does not hold a password made by this script (16-128 letters and digits)"
    printf '%s' "$value"
}

role_of() {
    case "$1" in
        projector | "$PROJECTOR_ROLE") printf '%s' "$PROJECTOR_ROLE" ;;
        reader | "$READER_ROLE") printf '%s' "$READER_ROLE" ;;
        postgres) printf '%s' "$SUPERUSER" ;;
        *) die "unknown role '$1' (projector, reader or postgres)" ;;
    esac
}

role_url() { printf 'postgresql+psycopg://%s@127.0.0.1:%s/%s' "$1" "$PORT" "$DB"; }

# The passwords (once), the superuser's pgpass file and the services' env files (rewritten:
# the port may have changed).
ensure_secrets() {
    mkdir -p "$SECRETS"
    chmod 700 "$SECRETS"
    local role
    for role in "$PROJECTOR_ROLE" "$READER_ROLE"; do
        [[ -s "$SECRETS/$role.password" ]] || write_secret "$SECRETS/$role.password" "$(new_secret)"
        read_secret "$SECRETS/$role.password" >/dev/null # checked before the server starts
    done
    write_secret "$SECRETS/admin.pgpass" "*:*:*:$SUPERUSER:$(read_secret "$SECRETS/$SUPERUSER.password")"
    write_env_file projector "$PROJECTOR_ROLE" "writes the status tables (the projector, shaping replay)"
    write_env_file reader "$READER_ROLE" "reads the status tables (the operator's read commands, Grafana)"
}

write_env_file() {
    local name="$1" role="$2" what="$3" file="$SECRETS/$1.env"
    (
        umask 077
        cat >"$file.partial" <<EOF
# PostgreSQL credentials of the role '$role', which $what; written by infra/postgres/postgres.sh.
# Use them in a shell with:  set -a; . '$file'; set +a
# or give the file to a shaping command:  SHAPING_CREDENTIALS_FILE='$file' shaping ...
SHAPING_DB_URL='$(role_url "$role")'
SHAPING_DB_PASSWORD_FILE='$SECRETS/$role.password'
EOF
    )
    mv "$file.partial" "$file"
}

# The roles, the database and the privileges, as the superuser; idempotent, run on every `up`.
ensure_roles() {
    local projector_pw reader_pw
    projector_pw="$(read_secret "$SECRETS/$PROJECTOR_ROLE.password")"
    reader_pw="$(read_secret "$SECRETS/$READER_ROLE.password")"
    # infra/postgres/roles.sql (shared with docker-compose), its passwords through stdin: never
    # on a command line. They are letters and digits (read_secret checked): quoting is safe.
    psql_admin >/dev/null <<SQL
\set projector_password '$projector_pw'
\set reader_password '$reader_pw'
\i '$HERE/roles.sql'
SQL
}

# Everyone authenticates with a password (SCRAM); nothing else is accepted.
write_hba() {
    cat >"$DATA/pg_hba.conf" <<'EOF'
# Written by infra/postgres/postgres.sh on every 'up': a password (scram-sha-256) for every
# connection, Unix socket or TCP on the loopback; no trust, no replication.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
EOF
    if [[ "$IS_ROOT" -eq 1 ]]; then chown postgres:postgres "$DATA/pg_hba.conf"; fi
}

# --- subcommands -----------------------------------------------------------------

initialise() {
    mkdir -p "$DATA"
    chmod 700 "$DATA"
    if [[ "$IS_ROOT" -eq 1 ]]; then chown postgres:postgres "$DATA"; fi
    say "creating a new cluster in $DATA"
    local password pwfile rc=0
    password="$(new_secret)"
    # The superuser's password reaches initdb in a 0600 file of the server user (never on a
    # command line), removed as soon as initdb is done.
    pwfile="$(dirname "$DATA")/.initdb-password-$PORT"
    write_secret "$pwfile" "$password"
    if [[ "$IS_ROOT" -eq 1 ]]; then chown postgres:postgres "$pwfile"; fi
    as_server_user "$BIN/initdb" -D "$DATA" -U "$SUPERUSER" --pwfile="$pwfile" \
        -A scram-sha-256 -E UTF8 --no-locale --no-sync \
        >"$(dirname "$DATA")/initdb-$PORT.log" 2>&1 || rc=$?
    rm -f "$pwfile"
    if ((rc != 0)); then
        cat "$(dirname "$DATA")/initdb-$PORT.log" >&2
        die "initdb failed"
    fi
    rm -f "$(dirname "$DATA")/initdb-$PORT.log"
    mkdir -p "$SECRETS"
    chmod 700 "$SECRETS"
    write_secret "$SECRETS/$SUPERUSER.password" "$password"
    cat >>"$DATA/postgresql.conf" <<'EOF'

# --- added by infra/postgres/postgres.sh: a throwaway dev/test cluster ---
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
log_min_messages = warning
log_line_prefix = '%m [%p] '
password_encryption = 'scram-sha-256'
# Port and socket directory, rewritten on every `up`:
include_if_exists = 'shaping-runtime.conf'
EOF
}

up() {
    BIN="$(find_bin)" || { install_server; BIN="$(find_bin)" || die "no initdb even after installing"; }
    resolve_locations

    if is_running; then
        refuse_trusting_cluster
        say "already running on 127.0.0.1:$PORT (data $DATA)"
        ensure_secrets
        ensure_roles
        print_credentials
        return 0
    fi
    if port_open "$PORT"; then
        die "port 127.0.0.1:$PORT is already in use by another server (not the cluster in $DATA)"
    fi

    [[ -f "$DATA/PG_VERSION" ]] || initialise
    refuse_trusting_cluster
    ensure_secrets
    write_hba
    if [[ "$IS_ROOT" -eq 1 && "$(stat -c %U "$DATA")" != postgres ]]; then
        chown -R postgres:postgres "$DATA"
    fi

    mkdir -p "$SOCKDIR"
    if [[ "$IS_ROOT" -eq 1 ]]; then chown postgres:postgres "$SOCKDIR"; fi
    cat >"$DATA/shaping-runtime.conf" <<EOF
# Written by infra/postgres/postgres.sh on every 'up'.
port = $PORT
unix_socket_directories = '$SOCKDIR'
password_encryption = 'scram-sha-256'
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
    if [[ -n "${SHAPING_OWNER_PID:-}" ]]; then
        start_watchdog "$SHAPING_OWNER_PID"
    fi
    ensure_roles
    say "up on 127.0.0.1:$PORT after $((SECONDS - started)) s; every connection needs a password (scram-sha-256)"
    print_credentials
}

# A cluster without our superuser password was made by an older version of this script
# (trust authentication): its tables are only a projection of the Kafka log.
refuse_trusting_cluster() {
    [[ -s "$SECRETS/$SUPERUSER.password" ]] && return 0
    die "$DATA was created without passwords (trust authentication, by an older infra/postgres/postgres.sh). It holds only the projector's tables, which the projector rebuilds from Kafka: stop it ($0 down), remove it (rm -rf $DATA) and run $0 up again"
}

print_credentials() {
    say "roles (their passwords in files of mode 0600 in $SECRETS):"
    printf 'postgres:   %-18s %s  (writes; %s)\n' "$PROJECTOR_ROLE" "$(role_url "$PROJECTOR_ROLE")" "$SECRETS/projector.env"
    printf 'postgres:   %-18s %s  (reads; %s)\n' "$READER_ROLE" "$(role_url "$READER_ROLE")" "$SECRETS/reader.env"
    say "to use a role:  set -a; . '$SECRETS/reader.env'; set +a   (or SHAPING_CREDENTIALS_FILE='$SECRETS/reader.env')"
}

credentials() {
    resolve_locations_readonly
    [[ -s "$SECRETS/$SUPERUSER.password" ]] || die "no credentials in $SECRETS yet: run $0 up"
    print_credentials
}

rotate() {
    [[ $# -eq 1 ]] || die "usage: $0 rotate projector|reader|postgres"
    local role
    role="$(role_of "$1")"
    BIN="$(find_bin)" || die "PostgreSQL is not installed"
    resolve_locations_readonly
    is_running || die "the server of $DATA is not running (start it with: $0 up)"
    [[ -s "$SECRETS/$SUPERUSER.password" ]] || die "no credentials in $SECRETS"
    local file="$SECRETS/$role.password" password
    password="$(new_secret)"
    psql_admin >/dev/null <<SQL
SET log_statement = 'none';
ALTER ROLE $role PASSWORD '$password';
SQL
    write_secret "$file" "$password"
    if [[ "$role" == "$SUPERUSER" ]]; then
        write_secret "$SECRETS/admin.pgpass" "*:*:*:$SUPERUSER:$password"
    fi
    say "new password of '$role' in $file; clients using it need a restart"
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

# The untracked env file docker-compose.yml takes PostgreSQL's passwords from (.env next to it):
# the missing ones are added, random; the file is made 0600 and refused if others may read it.
compose_env() {
    local file="${1:-$REPO/.env}" name mode added=0
    file="$(absolute_from_caller "$file")"
    (
        umask 077
        touch "$file"
    )
    mode="$(stat -c '%a' "$file")"
    [[ "$mode" =~ ^[0-7]?[0-7]00$ ]] || die "$file may be read by others (mode $mode); chmod 600 $file"
    for name in SHAPING_PG_SUPERUSER_PASSWORD SHAPING_PG_PROJECTOR_PASSWORD SHAPING_PG_READER_PASSWORD; do
        if ! grep -q "^$name=" "$file"; then
            printf '%s=%s\n' "$name" "$(new_secret)" >>"$file"
            added=$((added + 1))
        fi
    done
    say "$file (mode $(stat -c '%a' "$file")): $added password(s) added; docker compose reads the .env next to docker-compose.yml, which git ignores"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    url)
        url_role="$(role_of "${2:-projector}")"
        role_url "$url_role"
        printf '\n'
        ;;
    credentials) credentials ;;
    compose-env) compose_env "${2:-}" ;;
    rotate)
        shift
        rotate "$@"
        ;;
    *)
        echo "usage: $0 up|down|status|url [projector|reader]|credentials|rotate ROLE|compose-env [FILE]" >&2
        exit 2
        ;;
esac
