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

start=$SECONDS
"$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" browser chromium || {
    say "the browser test needs Chromium (or BOOK_CHROMIUM=/path/to/chromium)"
    exit 1
}
command -v chromium >/dev/null 2>&1 || { say "apt-get finished but there is no chromium on PATH"; exit 1; }
say "installed $(chromium --version 2>/dev/null | head -1) in $((SECONDS - start)) s"
