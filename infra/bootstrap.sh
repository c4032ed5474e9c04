#!/usr/bin/env bash
# Creates the project's virtualenv (.venv) and installs Shaping into it, once per change of
# pyproject.toml or requirements.lock. Usage: infra/bootstrap.sh [EXTRAS]   (default extras:
# rig,services,dev). Every package comes at the version requirements.lock pins (pip's
# constraints; `make lock` rewrites the file).
# Quiet unless it fails: the output of venv and pip goes to a log (.cache/bootstrap.log, or
# SHAPING_BOOTSTRAP_LOG), which is printed only when a step fails.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SHAPING_VENV:-$REPO/.venv}"
EXTRAS="${1:-rig,services,dev}"
PYTHON_BIN="${PYTHON_BIN:-python3}"
LOG="${SHAPING_BOOTSTRAP_LOG:-$REPO/.cache/bootstrap.log}"
LOCK="$REPO/requirements.lock"

say() { printf 'bootstrap: %s\n' "$*"; }

# A fresh log for each run that has work to do.
log_started=0
start_log() {
    mkdir -p "$(dirname "$LOG")"
    printf 'bootstrap %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$LOG"
    log_started=1
}

# Runs a command with its output appended to the log; if it fails, prints the log and stops.
logged() {
    [[ "$log_started" == 1 ]] || start_log
    if ! "$@" >>"$LOG" 2>&1; then
        {
            echo "bootstrap: failed: $*"
            echo "bootstrap: its output (the last 200 lines of $LOG):"
            tail -n 200 "$LOG"
            echo "bootstrap: failed; the whole output is in $LOG"
        } >&2
        exit 1
    fi
}

if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: Shaping needs Python 3.11 or newer ($PYTHON_BIN is $("$PYTHON_BIN" -V 2>&1))" >&2
    exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV"
    logged "$PYTHON_BIN" -m venv "$VENV"
    logged "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip
fi

# Reinstall only when pyproject.toml, the lock or the requested extras change.
stamp="$VENV/.shaping-installed"
want="$(cat "$REPO/pyproject.toml" "$LOCK" | sha256sum | cut -d' ' -f1) $EXTRAS"
if [[ -f "$stamp" ]] && grep -qxF "$want" "$stamp"; then
    exit 0
fi
say "installing shaping[$EXTRAS] into $VENV (a few minutes the first time)"
logged "$VENV/bin/python" -m pip install --disable-pip-version-check -c "$LOCK" -e "$REPO[$EXTRAS]"
echo "$want" > "$stamp"
