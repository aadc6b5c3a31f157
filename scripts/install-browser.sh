#!/usr/bin/env bash
# Make sure Debian's Chromium is installed, for tests/test_browser.py (run by `make test`).
#
# The browser comes from the distribution's package manager (apt-get install chromium), never
# from a browser vendor's download; Playwright's Python package drives it (`playwright install`
# is never run). Does nothing when a Chromium is already there (BOOK_CHROMIUM, chromium or
# chromium-browser on PATH).
set -euo pipefail

say() { printf '[browser] %s\n' "$*" >&2; }

if [ -n "${BOOK_CHROMIUM:-}" ] && [ -x "${BOOK_CHROMIUM}" ]; then
    exit 0
fi
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "Chromium is missing and this is not a Debian/Ubuntu system: install Chromium with your"
    say "package manager, or set BOOK_CHROMIUM=/path/to/chromium; the browser test needs it."
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        say "Chromium is missing; install it with:  sudo apt-get install -y chromium"
        exit 1
    fi
fi

say "installing Debian's chromium (apt-get install -y chromium)"
start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q chromium >/dev/null; then
    "${SUDO[@]}" apt-get update -q >/dev/null
    "${SUDO[@]}" apt-get install -y -q chromium >/dev/null
fi
command -v chromium >/dev/null 2>&1 || { say "apt-get finished but there is no chromium on PATH"; exit 1; }
say "installed $(chromium --version 2>/dev/null | head -1) in $((SECONDS - start)) s"
