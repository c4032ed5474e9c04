#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft: broker + controller in one JVM) for
# development and tests. No Docker: the broker's jars come from Maven Central
# (see pom.xml next to this script) and run straight from a cache directory.
#
# Usage: infra/kafka/kafka.sh fetch|up|down|status
#
#   fetch   copy the broker classpath into $SHAPING_CACHE/kafka-3.9.1/lib (once)
#   up      fetch if needed, format the KRaft storage if needed, start the broker
#           in the background and wait until it answers; a no-op if it already runs
#   down    SIGTERM, wait up to 30 s, then SIGKILL; removes the pid file
#   status  exit 0 and say so if it runs, exit 3 if not
#
# Environment:
#   SHAPING_KAFKA_PORT             client listener port            (default 9092)
#   SHAPING_KAFKA_CONTROLLER_PORT  KRaft controller listener port  (default 9093)
#   SHAPING_KAFKA_DATA             data dir: log.dirs, server.properties, kafka.log,
#                                  kafka.pid                (default $REPO/.cache/kafka-data)
#   SHAPING_CACHE                  where the jars go        (default $REPO/.cache)
#   SHAPING_KAFKA_START_TIMEOUT    seconds `up` waits for the broker (default 60)
#   SHAPING_KAFKA_HEAP             JVM -Xmx                 (default 512m)
#   SHAPING_OWNER_PID              optional: stop the broker when this process
#                                  exits (the test fixtures use it as a safety net)
#   PYTHON                         interpreter with kafka-python (default $REPO/.venv/bin/python)
#
# Everything binds to 127.0.0.1 only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

KAFKA_VERSION=3.9.1
CACHE="${SHAPING_CACHE:-$REPO/.cache}"
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
LIB="$KAFKA_HOME/lib"
LIB_MARKER="$KAFKA_HOME/.lib-complete"

PORT="${SHAPING_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${SHAPING_KAFKA_CONTROLLER_PORT:-9093}"
DATA="${SHAPING_KAFKA_DATA:-$REPO/.cache/kafka-data}"
START_TIMEOUT="${SHAPING_KAFKA_START_TIMEOUT:-60}"
HEAP="${SHAPING_KAFKA_HEAP:-512m}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
LOG4J="$HERE/log4j.properties"

PROPS="$DATA/server.properties"
LOGFILE="$DATA/kafka.log"
PIDFILE="$DATA/kafka.pid"
WATCH_PIDFILE="$DATA/kafka-watchdog.pid"
LOG_DIRS="$DATA/logs"

say() { printf 'kafka: %s\n' "$*"; }
die() { printf 'kafka: ERROR: %s\n' "$*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed ($2)"; }

# --- fetch -------------------------------------------------------------------

fetch() {
    if [[ -f "$LIB_MARKER" && -d "$LIB" ]]; then
        return 0
    fi
    need mvn "apt-get install maven"
    need java "apt-get install openjdk-17-jre-headless"
    mkdir -p "$KAFKA_HOME"
    # Serialise concurrent fetches (e.g. two test sessions starting at once).
    exec 8>"$KAFKA_HOME/.fetch.lock"
    flock 8
    if [[ -f "$LIB_MARKER" && -d "$LIB" ]]; then
        exec 8>&-
        return 0
    fi
    say "fetching the Kafka $KAFKA_VERSION broker classpath with Maven into $LIB"
    rm -rf "$LIB" "$LIB.partial"
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" \
        dependency:copy-dependencies \
        -DincludeScope=runtime \
        -DoutputDirectory="$LIB.partial" 2>&1 \
        | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' \
        || die "Maven could not copy the Kafka jars (is Maven Central reachable?)"
    ls "$LIB.partial"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
        || die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing in $LIB.partial"
    mv "$LIB.partial" "$LIB"
    touch "$LIB_MARKER"
    exec 8>&-
    say "fetched $(find "$LIB" -name '*.jar' | wc -l) jars ($(du -sh "$LIB" | cut -f1))"
}

# --- helpers ---------------------------------------------------------------------

read_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PIDFILE")"
    [[ -n "$pid" ]] || return 1
    printf '%s' "$pid"
}

# True if $1 is alive and really is our broker (guards against a recycled pid).
is_our_broker() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "kafka.Kafka $PROPS"
}

running_pid() {
    local pid
    pid="$(read_pid)" || return 1
    is_our_broker "$pid" || return 1
    printf '%s' "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Ask the broker for its metadata with kafka-python. Retries until the broker
# lists itself as an (unfenced) broker and answers a topic listing.
#   probe <timeout-seconds> [pid-that-must-stay-alive]
probe() {
    "$PYTHON" - "127.0.0.1:$PORT" "$1" "${2:-0}" <<'PY'
import logging
import os
import sys
import time

logging.disable(logging.CRITICAL)
from kafka import KafkaAdminClient  # noqa: E402

bootstrap, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + timeout
last = "no answer yet"
while time.monotonic() < deadline:
    if pid:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"broker process {pid} exited", file=sys.stderr)
            sys.exit(2)
    admin = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="shaping-kafka-sh-probe",
            request_timeout_ms=5000,
            bootstrap_timeout_ms=5000,
        )
        if admin.describe_cluster().get("brokers"):
            admin.list_topics()
            sys.exit(0)
        last = "broker registered no brokers yet"
    except Exception as exc:  # the broker is still starting
        last = f"{type(exc).__name__}: {exc}"
    finally:
        if admin is not None:
            try:
                admin.close()
            except Exception:
                pass
    time.sleep(0.5)
print(f"no answer from {bootstrap} within {timeout:.0f} s ({last})", file=sys.stderr)
sys.exit(1)
PY
}

new_cluster_id() {
    # A Kafka Uuid in base64url without padding: 16 random bytes -> 22 chars.
    # Avoid a leading '-' (it would look like a command-line option).
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* && ${#id} -eq 22 ]] && break
    done
    printf '%s' "$id"
}

write_properties() {
    cat >"$PROPS" <<EOF
# Written by infra/kafka/kafka.sh on every 'up'; edits are overwritten.
# Single-node KRaft cluster: this JVM is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT

log.dirs=$LOG_DIRS
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
delete.topic.enable=true

offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0

# The log cleaner must run for compacted topics (it does by default; be explicit).
log.cleaner.enable=true
EOF
}

# --- subcommands -------------------------------------------------------------------

up() {
    local pid
    if pid="$(running_pid)"; then
        say "already running (pid $pid) on 127.0.0.1:$PORT"
        return 0
    fi
    if port_open "$PORT"; then
        if probe 5 >/dev/null 2>&1; then
            say "a Kafka broker already answers on 127.0.0.1:$PORT (not started from $DATA); leaving it alone"
            return 0
        fi
        die "port 127.0.0.1:$PORT is in use by something that is not a Kafka broker"
    fi
    port_open "$CONTROLLER_PORT" && die "controller port 127.0.0.1:$CONTROLLER_PORT is already in use"
    [[ -x "$PYTHON" ]] || die "no python at $PYTHON (set PYTHON=... to an interpreter with kafka-python)"
    need java "apt-get install openjdk-17-jre-headless"

    fetch
    mkdir -p "$DATA" "$LOG_DIRS"
    write_properties
    rm -f "$PIDFILE"

    if [[ ! -f "$LOG_DIRS/meta.properties" ]]; then
        local cluster_id
        cluster_id="$(new_cluster_id)"
        say "formatting KRaft storage in $LOG_DIRS (cluster id $cluster_id)"
        java -cp "$LIB/*" -Dlog4j.configuration="file:$LOG4J" \
            kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" >>"$LOGFILE" 2>&1 \
            || { tail -n 30 "$LOGFILE" >&2; die "formatting the KRaft storage failed"; }
    fi

    say "starting broker on 127.0.0.1:$PORT (controller 127.0.0.1:$CONTROLLER_PORT, data $DATA)"
    local started=$SECONDS
    {
        printf '\n===== %s kafka.sh up (port %s) =====\n' "$(date -Is)" "$PORT"
    } >>"$LOGFILE"
    # setsid: own session, so the broker survives the shell that started it and
    # is not hit by a terminal's Ctrl-C. All fds are redirected so callers that
    # capture our output (subprocess.run) do not wait for the broker.
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
        java -Xmx"$HEAP" -Xms128m -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -cp "$LIB/*" -Dlog4j.configuration="file:$LOG4J" \
        kafka.Kafka "$PROPS" </dev/null >>"$LOGFILE" 2>&1 &

    # Wait for the pid file written by the child.
    local i
    for i in $(seq 1 50); do
        [[ -s "$PIDFILE" ]] && break
        sleep 0.1
    done
    pid="$(read_pid)" || die "the broker did not record its pid in $PIDFILE"

    if ! probe "$START_TIMEOUT" "$pid"; then
        echo "----- last lines of $LOGFILE -----" >&2
        tail -n 40 "$LOGFILE" >&2 || true
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$PIDFILE"
        die "the broker did not come up on 127.0.0.1:$PORT"
    fi

    if [[ -n "${SHAPING_OWNER_PID:-}" ]]; then
        start_watchdog "$pid" "$SHAPING_OWNER_PID"
    fi
    say "up (pid $pid) on 127.0.0.1:$PORT after $((SECONDS - started)) s"
}


source "$(dirname "${BASH_SOURCE[0]}")/../lib/watchdog.sh"

down() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"
        stop_watchdog
        say "not running (data $DATA)"
        return 0
    fi
    stop_watchdog
    say "stopping broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still alive after 30 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$PIDFILE"
    say "stopped"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        if port_open "$PORT"; then
            say "running (pid $pid) on 127.0.0.1:$PORT, controller 127.0.0.1:$CONTROLLER_PORT, data $DATA"
        else
            say "process $pid is alive but 127.0.0.1:$PORT does not accept connections (starting or stuck?); log: $LOGFILE"
        fi
        return 0
    fi
    say "not running (data $DATA)"
    return 3
}

case "${1:-}" in
    fetch) fetch; say "jars in $LIB" ;;
    up) up ;;
    down) down ;;
    status) status ;;
    *)
        echo "usage: $0 fetch|up|down|status" >&2
        exit 2
        ;;
esac
