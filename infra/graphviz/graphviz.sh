#!/usr/bin/env bash
# Makes sure graphviz's `dot` is installed (curriculum diagrams: `shaping curriculum render`).
# Usage: infra/graphviz/graphviz.sh ensure
set -euo pipefail

case "${1:-ensure}" in
    ensure)
        if command -v dot >/dev/null 2>&1; then
            exit 0
        fi
        if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "graphviz: installing Debian's graphviz (for the dot command)" >&2
            apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq graphviz >/dev/null
            command -v dot >/dev/null 2>&1 && exit 0
        fi
        echo "graphviz: the dot command is missing; install graphviz (Debian: sudo apt-get install graphviz)" >&2
        exit 1
        ;;
    *)
        echo "usage: $0 ensure" >&2
        exit 2
        ;;
esac
