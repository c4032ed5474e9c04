#!/usr/bin/env bash
# The whole Shaping stack as local processes, the same stack docker-compose.yml runs:
# Kafka (infra/kafka), PostgreSQL (infra/postgres), the topics, the ingress gate, the processor,
# the projector, the alerts service, the notifier (when the lab gave its routing file), the
# trainers' web page, and Prometheus (infra/prometheus) scraping them all.
# `make stack-up` / `make stack-down` call this.
#
# Secured by default (docs/security.md, "The local stack"): Kafka runs `kafka.sh up --secure`
# (SASL_SCRAM over TLS, ACLs; the CA, principals and passwords are made on the first `up`, in
# $SHAPING_STACK_DIR/kafka/secrets), PostgreSQL asks every connection for a password
# (postgres.sh: roles shaping_projector and shaping_reader, secrets in
# $SHAPING_STACK_DIR/postgres/secrets). Each service runs with its own credentials, read from
# those 0600 files: the processor as the Kafka principal 'processor', the projector as
# 'projector' and the database role shaping_projector, the alerts service as 'alerts', the
# notifier as 'notifier', the web page as 'web' (an operator speaking for its logged-in users,
# web/<user>) reading the tables as shaping_reader; the topics are created as 'admin'.
#
# The alerts service runs the lab's rules file SHAPING_ALERT_RULES, or the built-in rules
# (docs/alerts.md) with the heartbeats on. The notifier needs the lab's routing file
# SHAPING_ALERT_ROUTING (who hears of what, the SMTP server, webhooks); without it the notifier
# is not started and `up` says so. The web page listens on 127.0.0.1:$SHAPING_WEB_PORT with its
# users in $SHAPING_STACK_DIR/web/users.json: on the first `up` nobody is in it, and the user
# 'manager' (a lab manager) is made with a random password in
# $SHAPING_STACK_DIR/web/manager.initial-password (0600). SHAPING_WELFARE_POLICY (the lab's
# policy file) reaches the processor, the alerts service and the page alike.
# `up` writes the operator's credentials to $SHAPING_STACK_DIR/operator.env (mode 0600: the
# Kafka principal 'operator', the read-only role shaping_reader; paths to the password files,
# not the passwords) and prints how to use it:
#   set -a; . .cache/stack/operator.env; set +a; .venv/bin/shaping status
#   SHAPING_CREDENTIALS_FILE=.cache/stack/operator.env .venv/bin/shaping status
# SHAPING_STACK_INSECURE=1 (debugging only) starts Kafka in plaintext without ACLs instead;
# PostgreSQL keeps its passwords. A stack dir whose Kafka was once secured stays secured.
#
# Usage: infra/stack.sh up|down|status|config|check
#
#   up      check what the parts need (see `check`), then start every part that is not
#           running, in order, and wait until each answers; if a part fails, stop again the
#           parts this `up` started, so a failed `up` leaves nothing running
#   down    stop every part, in reverse order (also the parts of a half-started stack)
#   status  one line per part; exit 0 if all run, 3 otherwise
#   config  print the effective SHAPING_* settings, one KEY=VALUE a line
#   check   only check, starting nothing: the interpreter exists, and (as root, where the
#           PostgreSQL server runs as the user 'postgres') 'postgres' can reach the stack dir
#
# Settings: infra/shaping.env, the file docker-compose.yml gives its services. A variable that is
# already set in the environment wins over the file, so e.g.
#   SHAPING_KAFKA_PORT=19092 SHAPING_PROMETHEUS_PORT=19090 infra/stack.sh up
# starts a second stack on other ports. Also read:
#   SHAPING_STACK_DIR  data, logs and pid files of every part   (default $REPO/.cache/stack)
#   SHAPING_STACK_INSECURE  1: Kafka in plaintext, no authentication (debugging; default 0)
#   SHAPING_ALERT_RULES     the lab's alert-rules file   (default: the built-in rules)
#   SHAPING_ALERT_ROUTING   the lab's routing file       (default: none, no notifier)
#   SHAPING_WELFARE_POLICY  the lab's welfare policy     (default: the built-in policy)
#   SHAPING_OWNER_PID  optional: take the stack down when this process exits (tests)
#   PYTHON             interpreter with Shaping installed        (default $REPO/.venv/bin/python)
# Everything listens on 127.0.0.1 only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
ENV_FILE="$HERE/shaping.env"

# Export every KEY=VALUE of the settings file unless the environment sets it already.
while IFS= read -r line || [[ -n "$line" ]]; do
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || { echo "stack: bad line in $ENV_FILE: $line" >&2; exit 2; }
    key="${BASH_REMATCH[1]}"
    if [[ -z "${!key+set}" ]]; then export "$key=${BASH_REMATCH[2]}"; fi
done <"$ENV_FILE"

STACK="${SHAPING_STACK_DIR:-$REPO/.cache/stack}"
[[ "$STACK" == /* ]] || STACK="$PWD/$STACK"
export PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
OWNER="${SHAPING_OWNER_PID:-}"
# The parts below get the stack's own watchdog instead of one each.
unset SHAPING_OWNER_PID
# The stack's parts use the credentials the stack made, never ones of the calling shell (which
# may have sourced the operator's file): no service may run as someone else.
unset SHAPING_CREDENTIALS_FILE SHAPING_DB_URL SHAPING_DB_PASSWORD_FILE SHAPING_KAFKA_SECURITY_PROTOCOL \
    SHAPING_KAFKA_SASL_MECHANISM SHAPING_KAFKA_SASL_USERNAME SHAPING_KAFKA_SASL_PASSWORD \
    SHAPING_KAFKA_SASL_PASSWORD_FILE SHAPING_KAFKA_SSL_CAFILE SHAPING_KAFKA_SECURE
case "${SHAPING_STACK_INSECURE:-0}" in
    0 | "" | false | no | off) SECURE=1 ;;
    1 | true | yes | on) SECURE=0 ;;
    *)
        echo "stack: SHAPING_STACK_INSECURE must be 1 or 0, not '$SHAPING_STACK_INSECURE'" >&2
        exit 2
        ;;
esac

export SHAPING_BOOTSTRAP="127.0.0.1:$SHAPING_KAFKA_PORT"
export SHAPING_KAFKA_DATA="$STACK/kafka"
export SHAPING_PG_DATA="$STACK/postgres"
export SHAPING_PROMETHEUS_DATA="$STACK/prometheus"
export SHAPING_DATA_DIR="$STACK/data"
export SHAPING_METRICS_HOST=127.0.0.1
WEB_DIR="$STACK/web"
# Relative paths of the lab's files are the caller's: the services start elsewhere.
for key in SHAPING_ALERT_RULES SHAPING_ALERT_ROUTING SHAPING_WELFARE_POLICY; do
    value="${!key:-}"
    if [[ -n "$value" ]]; then
        [[ -r "$value" ]] || { echo "stack: $key=$value: no such readable file" >&2; exit 2; }
        [[ "$value" == /* ]] || export "$key=$PWD/$value"
    fi
done

KAFKA_SH="$HERE/kafka/kafka.sh"
POSTGRES_SH="$HERE/postgres/postgres.sh"
KAFKA_SECRETS="$SHAPING_KAFKA_DATA/secrets"
PG_SECRETS="$SHAPING_PG_DATA/secrets"
OPERATOR_ENV="$STACK/operator.env"
PROMETHEUS_SH="$HERE/prometheus/prometheus.sh"
SERVICES=(ingress processor projector alerts notifier web)
# The ingress gate (`shaping ingress run`, the Kafka principal 'ingress') forwards what rigs and
# operators write on their own ingress topics to events and commands (docs/security.md). On the
# insecure stack nobody writes an ingress topic (rigs and operators write events and commands
# themselves) and the gate idles.
WATCH_PIDFILE="$STACK/stack-watchdog.pid"
START_TIMEOUT="${SHAPING_STACK_START_TIMEOUT:-120}"

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: ERROR: %s\n' "$*" >&2; exit 1; }

metrics_port() {
    case "$1" in
        ingress) printf '%s' "$SHAPING_INGRESS_METRICS_PORT" ;;
        processor) printf '%s' "$SHAPING_PROCESSOR_METRICS_PORT" ;;
        projector) printf '%s' "$SHAPING_PROJECTOR_METRICS_PORT" ;;
        alerts) printf '%s' "$SHAPING_ALERTS_METRICS_PORT" ;;
        notifier) printf '%s' "$SHAPING_NOTIFIER_METRICS_PORT" ;;
        web) printf '%s' "$SHAPING_WEB_METRICS_PORT" ;;
    esac
}

# The services this stack runs: every one, but the notifier only with a routing file.
configured() { [[ "$1" != notifier || -n "${SHAPING_ALERT_ROUTING:-}" ]]; }

# The Prometheus targets: every configured service's metrics.
prometheus_targets() {
    local name targets=()
    for name in "${SERVICES[@]}"; do
        configured "$name" && targets+=("$name=127.0.0.1:$(metrics_port "$name")")
    done
    printf '%s' "${targets[*]}"
}

# pid of a running service started by this stack, or fail.
service_pid() {
    local file="$STACK/$1.pid" pid
    [[ -f "$file" ]] || return 1
    pid="$(tr -dc '0-9' <"$file")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "shaping.services.cli $1" || return 1
    fi
    printf '%s' "$pid"
}

# The env files a service is started with (sourced: they win over the environment): its Kafka
# principal's (secured stack) and, for the projector, the database role's.
service_env_files() {
    case "$1" in
        processor) ((SECURE)) && printf '%s\n' "$KAFKA_SECRETS/processor.env" ;;
        projector)
            ((SECURE)) && printf '%s\n' "$KAFKA_SECRETS/projector.env"
            printf '%s\n' "$PG_SECRETS/projector.env"
            ;;
        ingress | alerts | notifier) ((SECURE)) && printf '%s\n' "$KAFKA_SECRETS/$1.env" ;;
        web)
            ((SECURE)) && printf '%s\n' "$KAFKA_SECRETS/web.env"
            printf '%s\n' "$PG_SECRETS/reader.env"
            ;;
    esac
    return 0
}

# The command line of a service (after `python -m shaping.services.cli`).
service_args() {
    case "$1" in
        ingress | alerts | notifier) printf '%s\n' "$1" run ;;
        web)
            printf '%s\n' web --host 127.0.0.1 --port "$SHAPING_WEB_PORT" \
                --users-file "$WEB_DIR/users.json" --secret-file "$WEB_DIR/session.key" \
                --first-manager manager
            ;;
        *) printf '%s\n' "$1" ;;
    esac
}

# as_principal FILE... -- COMMAND...: COMMAND with the settings of the env FILEs.
as_principal() {
    # shellcheck disable=SC1090
    (
        set -a
        while [[ "$1" != -- ]]; do
            . "$1"
            shift
        done
        shift
        set +a
        exec "$@"
    )
}

metrics_answer() {
    curl -fsS -m 2 "http://127.0.0.1:$(metrics_port "$1")/metrics" >/dev/null 2>&1 || return 1
    # The page's metrics start before the page itself: wait for both.
    [[ "$1" != web ]] || curl -fsS -m 2 "http://127.0.0.1:$SHAPING_WEB_PORT/healthz" >/dev/null 2>&1
}

start_service() {
    local name="$1" pid
    if ! configured "$name"; then
        say "$name not started: no routing file (set SHAPING_ALERT_ROUTING to the lab's; docs/alerts.md)"
        return 0
    fi
    if pid="$(service_pid "$name")"; then
        say "$name already running (pid $pid)"
        return 0
    fi
    local port
    port="$(metrics_port "$name")"
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "metrics port 127.0.0.1:$port of the $name is in use"
    if [[ "$name" == web ]]; then
        (exec 3<>"/dev/tcp/127.0.0.1/$SHAPING_WEB_PORT") 2>/dev/null && die "the web page's port 127.0.0.1:$SHAPING_WEB_PORT is in use (SHAPING_WEB_PORT)"
        mkdir -p "$WEB_DIR"
        chmod 700 "$WEB_DIR"
    fi
    local args=() files=() file
    mapfile -t args < <(service_args "$name")
    mapfile -t files < <(service_env_files "$name")
    for file in "${files[@]}"; do
        [[ -r "$file" ]] || die "the $name's credentials $file are missing"
    done
    printf '\n===== %s stack.sh up =====\n' "$(date -Is)" >>"$STACK/$name.log"
    # The env files are sourced inside the service's shell: the password files' paths reach
    # its environment, the passwords never reach a command line or the environment.
    # shellcheck disable=SC2016
    setsid bash -c '
        echo $$ >"$1"
        shift
        set -a
        while [ "$1" != -- ]; do . "$1"; shift; done
        shift
        set +a
        exec "$@"' _ "$STACK/$name.pid" "${files[@]}" -- \
        "$PYTHON" -m shaping.services.cli "${args[@]}" </dev/null >>"$STACK/$name.log" 2>&1 &
    local started=$SECONDS
    until metrics_answer "$name"; do
        sleep 0.3
        pid="$(service_pid "$name")" || { tail -n 30 "$STACK/$name.log" >&2; die "the $name exited during start-up (log: $STACK/$name.log)"; }
        ((SECONDS - started < START_TIMEOUT)) || die "the $name did not answer on 127.0.0.1:$port within $START_TIMEOUT s"
    done
    say "$name up (pid $pid), metrics on http://127.0.0.1:$port/metrics"
}

stop_service() {
    local name="$1" pid
    if ! pid="$(service_pid "$name")"; then
        rm -f "$STACK/$name.pid"
        say "$name not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name still alive after 30 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STACK/$name.pid"
    say "$name stopped"
}

start_watchdog() {
    # shellcheck disable=SC2016
    setsid bash -c '
        owner=$1; shift
        while kill -0 "$owner" 2>/dev/null; do sleep 1; done
        exec "$@"' _ "$OWNER" env SHAPING_STACK_WATCHDOG=1 bash "$HERE/stack.sh" down \
        </dev/null >>"$STACK/watchdog.log" 2>&1 &
    echo $! >"$WATCH_PIDFILE"
}

stop_watchdog() {
    [[ -n "${SHAPING_STACK_WATCHDOG:-}" ]] && return 0
    if [[ -f "$WATCH_PIDFILE" ]]; then
        local wpid
        wpid="$(tr -dc '0-9' <"$WATCH_PIDFILE")"
        if [[ -n "$wpid" ]] && tr '\0' ' ' <"/proc/$wpid/cmdline" 2>/dev/null | grep -q 'kill -0'; then
            kill -TERM "$wpid" 2>/dev/null || true
        fi
        rm -f "$WATCH_PIDFILE"
    fi
}

# --- preconditions, checked before anything starts -----------------------------------

# Can the user that runs the PostgreSQL server search directory $1 itself (its own mode bits;
# the path above it is checked separately)? As root that user is 'postgres'; when the package
# is not installed yet (postgres.sh installs it), 'postgres' will be a stranger to $1.
pg_user_can_search() {
    local mode owner group bit=1 # others' x
    read -r mode owner group < <(stat -c '%a %U %G' "$1")
    if id postgres >/dev/null 2>&1; then
        if [[ "$owner" == postgres ]]; then
            bit=64 # owner's x
        elif id -nG postgres | tr ' ' '\n' | grep -qxF "$group"; then
            bit=8 # group's x
        fi
    fi
    (((8#$mode & bit) != 0))
}

# The directories on the way to $1 that stop 'postgres', outermost first.
pg_blockers() {
    local dir="$1" found=()
    while :; do
        if ! pg_user_can_search "$dir"; then found=("$dir" "${found[@]}"); fi
        [[ "$dir" == / ]] && break
        dir="$(dirname "$dir")"
    done
    printf '%s\n' "${found[@]}"
}

pg_user_reaches() {
    if id postgres >/dev/null 2>&1; then
        runuser -u postgres -- test -x "$1" 2>/dev/null
    else
        [[ -z "$(pg_blockers "$1")" ]]
    fi
}

preflight() {
    [[ -x "$PYTHON" ]] || die "no Python at $PYTHON: run 'make install' first (or set PYTHON to an interpreter with Shaping installed). Nothing was started."
    mkdir -p "$STACK" || die "cannot create the stack directory $STACK (SHAPING_STACK_DIR). Nothing was started."
    [[ "$(id -u)" -eq 0 ]] || return 0
    # As root, PostgreSQL runs as 'postgres' and keeps its data in $STACK/postgres.
    pg_user_reaches "$STACK" && return 0
    local blockers=() modes="" dir
    mapfile -t blockers < <(pg_blockers "$STACK")
    for dir in "${blockers[@]}"; do
        modes+=" $dir (mode $(stat -c %a "$dir"), owner $(stat -c %U "$dir"))"
    done
    {
        echo "stack: ERROR: PostgreSQL cannot keep its data in $STACK/postgres."
        echo "stack: Running as root, the PostgreSQL server runs as the user 'postgres', and"
        echo "stack: user 'postgres' cannot reach $STACK: it may not enter${modes:- a directory on the way (an ACL?)}."
        echo "stack: Nothing was started. Fix it either way:"
        echo "stack:   - put the stack where 'postgres' can reach it, e.g."
        echo "stack:       SHAPING_STACK_DIR=/var/tmp/shaping-stack make stack-up"
        if ((${#blockers[@]} > 0)); then
            echo "stack:   - or let 'postgres' (and every other user) through those directories:"
            local quoted
            quoted="$(printf '%q ' "${blockers[@]}")"
            echo "stack:       chmod o+x ${quoted% }"
        fi
    } >&2
    exit 1
}

# --- starting, and stopping again on failure ----------------------------------------------

part_running() {
    case "$1" in
        kafka) "$KAFKA_SH" status >/dev/null 2>&1 ;;
        postgres) "$POSTGRES_SH" status >/dev/null 2>&1 ;;
        prometheus) "$PROMETHEUS_SH" status >/dev/null 2>&1 ;;
        *) service_pid "$1" >/dev/null ;;
    esac
}

stop_part() {
    case "$1" in
        kafka) "$KAFKA_SH" down ;;
        postgres) "$POSTGRES_SH" down ;;
        prometheus) "$PROMETHEUS_SH" down ;;
        *) stop_service "$1" ;;
    esac
}

STARTED=()
# A part this `up` is about to start (not one that already ran): stopped again on failure.
claim() { part_running "$1" || STARTED+=("$1"); }

# EXIT trap of `up`: after a failure, stop the claimed parts, last first.
rollback() {
    local rc=$? i
    trap - EXIT INT TERM
    if ((rc != 0 && ${#STARTED[@]} > 0)); then
        echo "stack: up failed; stopping what it started: ${STARTED[*]}" >&2
        for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_part "${STARTED[$i]}" >&2 || true; done
        echo "stack: stopped what this up started (parts that ran before it are left running)" >&2
    fi
    exit "$rc"
}

# The operator's credentials: the Kafka principal 'operator' (secured stack) and the read-only
# database role, in one 0600 file (the lines of the parts' env files: paths to the password
# files, which stay where they are, mode 0600).
write_operator_env() {
    local file="$OPERATOR_ENV"
    (
        umask 077
        {
            echo "# The operator's credentials for the local stack, written by infra/stack.sh up."
            echo "# Use them in a shell:  set -a; . '$file'; set +a"
            echo "# or per command:       SHAPING_CREDENTIALS_FILE='$file' shaping status"
            if ((SECURE)); then
                echo "# Kafka: the principal 'operator' (SASL_SSL); the status tables: shaping_reader."
                grep -v '^#' "$KAFKA_SECRETS/operator.env"
            else
                echo "# Kafka: plaintext (SHAPING_STACK_INSECURE=1); the status tables: shaping_reader."
                echo "SHAPING_BOOTSTRAP='$SHAPING_BOOTSTRAP'"
            fi
            echo "SHAPING_TOPIC_PREFIX='$SHAPING_TOPIC_PREFIX'"
            grep -v '^#' "$PG_SECRETS/reader.env"
        } >"$file.partial"
    )
    mv "$file.partial" "$file"
}

up() {
    preflight
    trap rollback EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    claim kafka
    local admin=()
    if ((SECURE)); then
        "$KAFKA_SH" up --secure
        admin=("$KAFKA_SECRETS/admin.env")
    else
        say "SHAPING_STACK_INSECURE=1: Kafka in plaintext, without authentication or ACLs (debugging only)"
        "$KAFKA_SH" up
    fi
    as_principal "${admin[@]}" -- "$PYTHON" -m shaping.services.cli topics create >/dev/null
    say "topics ${SHAPING_TOPIC_PREFIX}.* ready on $SHAPING_BOOTSTRAP"
    claim postgres
    "$POSTGRES_SH" up
    local db_url
    db_url="$("$POSTGRES_SH" url projector)"
    for name in "${SERVICES[@]}"; do
        configured "$name" && claim "$name"
        start_service "$name"
    done
    claim prometheus
    SHAPING_PROMETHEUS_TARGETS="$(prometheus_targets)" "$PROMETHEUS_SH" up
    write_operator_env
    if [[ -n "$OWNER" ]]; then start_watchdog; fi
    trap - EXIT INT TERM
    local kafka="Kafka $SHAPING_BOOTSTRAP"
    if ((SECURE)); then kafka+=" (SASL_SSL, ACLs)"; else kafka+=" (PLAINTEXT, no ACLs)"; fi
    say "up: $kafka, status tables $db_url,"
    say "    Prometheus http://127.0.0.1:$SHAPING_PROMETHEUS_PORT (logs and data in $STACK)"
    say "the trainers' page: http://127.0.0.1:$SHAPING_WEB_PORT/ (users in $WEB_DIR/users.json)"
    if [[ -f "$WEB_DIR/manager.initial-password" ]]; then
        say "    first login: manager, password in $WEB_DIR/manager.initial-password (0600); add people with"
        say "    $REPO/.venv/bin/shaping web add-user NAME --role trainer|husbandry|manager --users-file $WEB_DIR/users.json"
    fi
    configured notifier || say "alerts are raised, but nobody is told: set SHAPING_ALERT_ROUTING (docs/alerts.md)"
    say "operator's credentials (mode 0600): $OPERATOR_ENV; use them with"
    say "    set -a; . '$OPERATOR_ENV'; set +a        (then: $REPO/.venv/bin/shaping status)"
    say " or SHAPING_CREDENTIALS_FILE='$OPERATOR_ENV' $REPO/.venv/bin/shaping status"
}

down() {
    stop_watchdog
    "$PROMETHEUS_SH" down
    local i
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop_service "${SERVICES[$i]}"; done
    "$POSTGRES_SH" down
    "$KAFKA_SH" down
}

status() {
    local all=0 name pid
    "$KAFKA_SH" status || all=3
    "$POSTGRES_SH" status || all=3
    for name in "${SERVICES[@]}"; do
        if pid="$(service_pid "$name")"; then
            say "$name running (pid $pid), metrics on 127.0.0.1:$(metrics_port "$name")"
        elif ! configured "$name"; then
            say "$name not configured (SHAPING_ALERT_ROUTING)"
        else
            say "$name not running"
            all=3
        fi
    done
    "$PROMETHEUS_SH" status || all=3
    return "$all"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    config) env | grep -E '^SHAPING_' | sort ;;
    check) preflight && say "ok: the stack can start in $STACK" ;;
    *)
        echo "usage: $0 up|down|status|config|check" >&2
        exit 2
        ;;
esac
