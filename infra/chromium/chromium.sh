#!/usr/bin/env bash
# Makes sure Debian's headless Chromium and its WebDriver are installed: the browser test of
# `shaping web` (tests/web/) drives the page through Selenium with them. Idempotent: does
# nothing when both commands are there.
# Usage: infra/chromium/chromium.sh ensure   (prints the two paths with `paths`)
set -euo pipefail

browser() { command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null || true; }
driver() {
    command -v chromedriver 2>/dev/null \
        || { [[ -x /usr/bin/chromedriver ]] && echo /usr/bin/chromedriver; } \
        || { [[ -x /usr/lib/chromium/chromedriver ]] && echo /usr/lib/chromium/chromedriver; } \
        || true
}
present() { [[ -n "$(browser)" && -n "$(driver)" ]]; }

case "${1:-ensure}" in
    ensure)
        if present; then
            exit 0
        fi
        if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "chromium: installing Debian's chromium and chromium-driver (for the browser test of shaping web)" >&2
            apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
                chromium chromium-driver >/dev/null
            present && exit 0
        fi
        echo "chromium: headless Chromium or its driver is missing; install them" \
            "(Debian: sudo apt-get install chromium chromium-driver)" >&2
        exit 1
        ;;
    paths)
        present || { echo "chromium: not installed (run $0 ensure)" >&2; exit 1; }
        echo "browser $(browser)"
        echo "driver $(driver)"
        ;;
    *)
        echo "usage: $0 ensure|paths" >&2
        exit 2
        ;;
esac
