#!/usr/bin/env bash
# A local Prometheus (Debian's package) that scrapes Shaping's services on 127.0.0.1, for the
# local stack and the tests. Not the Debian-managed service: our own instance, on our own port,
# with its own generated config and data directory.
#
# Usage: infra/prometheus/prometheus.sh install|config|up|down|status|url
#
#   install  apt-get the `prometheus` package if prometheus/promtool are missing (root), without
#            letting the Debian service start (or stopping it if it did)
#   config   write $DATA/prometheus.yml from the targets below and print its path
#   up       install if needed, write the config, check it with promtool, start Prometheus in
#            the background and wait until it is ready; a no-op if it already runs
#   down     SIGTERM, wait up to 30 s, then SIGKILL; removes the pid file
#   status   exit 0 and say so if it runs, exit 3 if not
#   url      print http://127.0.0.1:$PORT
#
# Environment:
#   SHAPING_PROMETHEUS_PORT             HTTP port                             (default 9090)
#   SHAPING_PROMETHEUS_DATA             config, TSDB, log, pid   (default $REPO/.cache/prometheus-data)
#   SHAPING_PROMETHEUS_SCRAPE_INTERVAL  scrape and evaluation interval        (default 15s)
#   SHAPING_PROMETHEUS_TARGETS          space- or comma-separated JOB=HOST:PORT scrape targets
#                                       (default: processor and projector on 127.0.0.1 at
#                                       $SHAPING_PROCESSOR_METRICS_PORT / $SHAPING_PROJECTOR_METRICS_PORT,
#                                       9101 and 9102 by default, as in infra/shaping.env)
#                                       (several targets of one job form one job, e.g. two rigs)
#   SHAPING_PROMETHEUS_RIG_FILES        file_sd files of the `rigs` job: the rigs' metrics endpoints
#                                       (`shaping rig run --metrics-port`), re-read when they change
#                                       (default: $REPO/infra/prometheus/rigs/*.yml, also what
#                                       docker-compose mounts)
#   SHAPING_OWNER_PID                   optional: stop Prometheus when this process exits
#
# Everything binds to 127.0.0.1 only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

PORT="${SHAPING_PROMETHEUS_PORT:-9090}"
DATA="${SHAPING_PROMETHEUS_DATA:-$REPO/.cache/prometheus-data}"
INTERVAL="${SHAPING_PROMETHEUS_SCRAPE_INTERVAL:-15s}"
TARGETS="${SHAPING_PROMETHEUS_TARGETS:-processor=127.0.0.1:${SHAPING_PROCESSOR_METRICS_PORT:-9101} projector=127.0.0.1:${SHAPING_PROJECTOR_METRICS_PORT:-9102} ingress=127.0.0.1:${SHAPING_INGRESS_METRICS_PORT:-9104}}"
RIG_FILES="${SHAPING_PROMETHEUS_RIG_FILES:-$REPO/infra/prometheus/rigs/*.yml}"
START_TIMEOUT="${SHAPING_PROMETHEUS_START_TIMEOUT:-60}"

CONFIG="$DATA/prometheus.yml"
TSDB="$DATA/tsdb"
LOGFILE="$DATA/prometheus.log"
PIDFILE="$DATA/prometheus.pid"
WATCH_PIDFILE="$DATA/prometheus-watchdog.pid"

say() { printf 'prometheus: %s\n' "$*"; }
die() { printf 'prometheus: ERROR: %s\n' "$*" >&2; exit 1; }

# --- install ---------------------------------------------------------------------

installed() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

install() {
    installed && return 0
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "prometheus/promtool not found. Install Debian's package: sudo apt-get install prometheus"
    fi
    say "installing Debian's 'prometheus' package"
    # Keep the package's own service (0.0.0.0:9090) from starting: this project runs its own
    # instance. policy-rc.d answering 101 is Debian's documented way to say "do not start".
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local status=0
    apt-get -o DPkg::Lock::Timeout=600 update -q || status=$?
    if [[ "$status" -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends prometheus \
            || status=$?
    fi
    if [[ "$added_policy" -eq 1 ]]; then rm -f "$policy"; fi
    [[ "$status" -eq 0 ]] || die "apt-get could not install prometheus (exit $status)"
    # Belt and braces: if the Debian service runs anyway (say under systemd), stop and disable it.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    elif [[ -f /run/prometheus.pid ]] && kill -0 "$(cat /run/prometheus.pid)" 2>/dev/null; then
        service prometheus stop >/dev/null 2>&1 || true
    fi
    installed || die "the prometheus package is installed but prometheus/promtool are not on PATH"
}

# --- config ----------------------------------------------------------------------

write_config() {
    mkdir -p "$DATA"
    # Targets grouped by job, jobs in the order they first appear.
    local -a jobs=()
    local -A addresses=()
    local target job address
    for target in ${TARGETS//,/ }; do
        [[ "$target" == *=* ]] || die "target '$target' is not JOB=HOST:PORT"
        job="${target%%=*}"
        address="${target#*=}"
        [[ "$job" =~ ^[A-Za-z_][A-Za-z0-9_-]*$ ]] || die "job name '$job' is not a name"
        [[ "$address" =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || die "target address '$address' is not HOST:PORT"
        if [[ -z "${addresses[$job]+set}" ]]; then
            jobs+=("$job")
            addresses[$job]="'$address'"
        else
            addresses[$job]+=", '$address'"
        fi
    done
    [[ -n "${addresses[rigs]+set}" ]] || jobs+=(rigs)
    {
        echo "# Written by infra/prometheus/prometheus.sh; edits are overwritten."
        echo "global:"
        echo "  scrape_interval: $INTERVAL"
        echo "  evaluation_interval: $INTERVAL"
        echo "scrape_configs:"
        for job in "${jobs[@]}"; do
            echo "  - job_name: $job"
            if [[ -n "${addresses[$job]+set}" ]]; then
                echo "    static_configs:"
                echo "      - targets: [${addresses[$job]}]"
            fi
            if [[ "$job" == rigs ]]; then
                # The rigs are machines of the lab: listed in files Prometheus re-reads.
                echo "    file_sd_configs:"
                echo "      - files: ['$RIG_FILES']"
                echo "        refresh_interval: 30s"
            fi
        done
    } >"$CONFIG.tmp"
    mv "$CONFIG.tmp" "$CONFIG"
}

# --- helpers ---------------------------------------------------------------------

read_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PIDFILE")"
    [[ -n "$pid" ]] || return 1
    printf '%s' "$pid"
}

# True if $1 is alive and really is our Prometheus (guards against a recycled pid).
is_ours() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ -r "/proc/$1/cmdline" ]] || return 0
    tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "--config.file=$CONFIG"
}

running_pid() {
    local pid
    pid="$(read_pid)" || return 1
    is_ours "$pid" || return 1
    printf '%s' "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ready() { curl -fsS -m 2 "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1; }

# --- subcommands -------------------------------------------------------------------

up() {
    local pid
    if pid="$(running_pid)"; then
        say "already running (pid $pid) on 127.0.0.1:$PORT"
        return 0
    fi
    port_open "$PORT" && die "port 127.0.0.1:$PORT is already in use (by something else than the Prometheus of $DATA)"
    install
    write_config
    promtool check config "$CONFIG" >"$DATA/promtool.log" 2>&1 \
        || { cat "$DATA/promtool.log" >&2; die "promtool rejected $CONFIG"; }
    mkdir -p "$TSDB"
    rm -f "$PIDFILE"
    say "starting on 127.0.0.1:$PORT (config $CONFIG, data $TSDB)"
    printf '\n===== %s prometheus.sh up (port %s) =====\n' "$(date -Is)" "$PORT" >>"$LOGFILE"
    # setsid: its own session, so it outlives the calling shell; every fd redirected so callers
    # capturing our output do not wait for it.
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
        prometheus --config.file="$CONFIG" --storage.tsdb.path="$TSDB" \
        --web.listen-address="127.0.0.1:$PORT" --storage.tsdb.retention.time=15d \
        </dev/null >>"$LOGFILE" 2>&1 &
    local i
    for i in $(seq 1 50); do
        [[ -s "$PIDFILE" ]] && break
        sleep 0.1
    done
    pid="$(read_pid)" || die "Prometheus did not record its pid in $PIDFILE"
    local started=$SECONDS
    until ready; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$LOGFILE" >&2 || true
            rm -f "$PIDFILE"
            die "Prometheus exited during start-up"
        fi
        if ((SECONDS - started > START_TIMEOUT)); then
            tail -n 30 "$LOGFILE" >&2 || true
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$PIDFILE"
            die "Prometheus was not ready on 127.0.0.1:$PORT within $START_TIMEOUT s"
        fi
        sleep 0.2
    done
    if [[ -n "${SHAPING_OWNER_PID:-}" ]]; then
        start_watchdog "$pid" "$SHAPING_OWNER_PID"
    fi
    say "up (pid $pid) on 127.0.0.1:$PORT, scraping: ${TARGETS//,/ }"
}


source "$(dirname "${BASH_SOURCE[0]}")/../lib/watchdog.sh"

down() {
    local pid
    stop_watchdog
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"
        say "not running (data $DATA)"
        return 0
    fi
    say "stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still alive after 30 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    say "stopped"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        if ready; then
            say "running (pid $pid) on 127.0.0.1:$PORT, ready (data $DATA)"
        else
            say "process $pid is alive but not ready on 127.0.0.1:$PORT; log: $LOGFILE"
        fi
        return 0
    fi
    say "not running (data $DATA)"
    return 3
}

case "${1:-}" in
    install) install; say "prometheus $(prometheus --version 2>&1 | head -n 1 | awk '{print $3}') at $(command -v prometheus)" ;;
    config) write_config; printf '%s\n' "$CONFIG" ;;
    up) up ;;
    down) down ;;
    status) status ;;
    url) printf 'http://127.0.0.1:%s\n' "$PORT" ;;
    *)
        echo "usage: $0 install|config|up|down|status|url" >&2
        exit 2
        ;;
esac
