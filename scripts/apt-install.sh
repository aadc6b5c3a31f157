#!/usr/bin/env bash
# Install Debian packages for the book's optional tests (called by install-browser.sh and
# install-postgres.sh): as root or with passwordless sudo, `apt-get update` only if the first
# attempt fails, quietly.
#
#   scripts/apt-install.sh TAG PACKAGE...
#
# Exits 0 once the packages are installed, 2 when this is not a Debian/Ubuntu system or there are
# no root rights (after saying how to install them by hand); the caller decides what that means.
set -euo pipefail

tag=$1; shift
say() { printf '[%s] %s\n' "$tag" "$*" >&2; }

if ! command -v apt-get >/dev/null 2>&1; then
    say "$* missing and this is not a Debian/Ubuntu system: install it with your package manager"
    exit 2
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        say "$* missing; install it with:  sudo apt-get install -y $*"
        exit 2
    fi
fi

say "installing Debian's $* (apt-get install -y $*)"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q "$@" >/dev/null; then
    "${SUDO[@]}" apt-get update -q >/dev/null
    "${SUDO[@]}" apt-get install -y -q "$@" >/dev/null
fi
