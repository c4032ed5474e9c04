#!/usr/bin/env bash
# Creates the project's virtualenv (.venv) and installs Shaping into it, once per change of
# pyproject.toml. Usage: infra/bootstrap.sh [EXTRAS]   (default extras: rig,services,dev)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SHAPING_VENV:-$REPO/.venv}"
EXTRAS="${1:-rig,services,dev}"
PYTHON_BIN="${PYTHON_BIN:-python3}"

say() { printf 'bootstrap: %s\n' "$*"; }

if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: Shaping needs Python 3.11 or newer ($PYTHON_BIN is $("$PYTHON_BIN" -V 2>&1))" >&2
    exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

# Reinstall only when pyproject.toml or the requested extras change.
stamp="$VENV/.shaping-installed"
want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) $EXTRAS"
if [[ -f "$stamp" ]] && grep -qxF "$want" "$stamp"; then
    exit 0
fi
say "installing shaping[$EXTRAS] into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$REPO[$EXTRAS]"
echo "$want" > "$stamp"
