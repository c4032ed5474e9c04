# Sourced by the infra scripts: stop a local server when the process that owns it (e.g. a
# pytest session, via SHAPING_OWNER_PID) disappears without running its teardown.
# The caller sets WATCH_PIDFILE before calling these.

# start_watchdog SERVER_PID OWNER_PID: SIGTERM the server (SIGKILL after 30 s) once the owner
# is gone; exits by itself when the server stops.
start_watchdog() {
    # shellcheck disable=SC2016
    setsid bash -c '
        server=$1 owner=$2
        while kill -0 "$server" 2>/dev/null; do
            if ! kill -0 "$owner" 2>/dev/null; then
                kill -TERM "$server" 2>/dev/null
                for _ in $(seq 1 60); do kill -0 "$server" 2>/dev/null || exit 0; sleep 0.5; done
                kill -KILL "$server" 2>/dev/null
                exit 0
            fi
            sleep 1
        done' _ "$1" "$2" </dev/null >/dev/null 2>&1 &
    echo $! >"$WATCH_PIDFILE"
}

# stop_watchdog [MARKER]: stops the watchdog recorded in WATCH_PIDFILE, but only if that pid
# still runs a watchdog (its command line holds MARKER), so a reused pid is never killed.
stop_watchdog() {
    local marker="${1:-kill -0}"
    if [[ -f "$WATCH_PIDFILE" ]]; then
        local wpid
        wpid="$(tr -dc '0-9' <"$WATCH_PIDFILE")"
        if [[ -n "$wpid" ]] && tr '\0' ' ' <"/proc/$wpid/cmdline" 2>/dev/null | grep -qF "$marker"; then
            kill -TERM "$wpid" 2>/dev/null || true
        fi
        rm -f "$WATCH_PIDFILE"
    fi
}
