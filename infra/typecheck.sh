#!/usr/bin/env bash
# mypy as `make lint` runs it, for the pre-commit hook: mypy finds the `shaping` namespace through
# a tree of links in .cache/typecheck (pyproject.toml [tool.mypy] mypy_path), which is made or
# refreshed first. Arguments go to mypy; the packages it checks are those of pyproject.toml.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SHAPING_VENV:-$REPO/.venv}"

cd "$REPO"
mkdir -p .cache/typecheck/shaping
for folder in services schemas rig curricula; do
    ln -sfn "../../../$folder" ".cache/typecheck/shaping/$folder"
done
exec "$VENV/bin/mypy" "$@"
