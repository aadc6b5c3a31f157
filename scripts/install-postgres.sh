#!/usr/bin/env bash
# Make sure a PostgreSQL server is installed, for tests/test_hpo_postgres.py (run by `make test`).
#
# The server comes from the distribution's package manager (apt-get install postgresql); the test
# starts a throwaway cluster of its own (initdb + pg_ctl in a temporary directory) and never
# touches a system cluster. Does nothing when initdb is already there (on PATH or in
# /usr/lib/postgresql/*/bin). Where it cannot be installed the test skips and says why.
set -euo pipefail

say() { printf '[postgres] %s\n' "$*" >&2; }

if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "PostgreSQL is missing and this is not a Debian/Ubuntu system: install its server with your"
    say "package manager; tests/test_hpo_postgres.py skips without it."
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        say "PostgreSQL is missing; install it with:  sudo apt-get install -y postgresql"
        say "(tests/test_hpo_postgres.py skips without it)"
        exit 0
    fi
fi

say "installing Debian's postgresql (apt-get install -y postgresql)"
start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q postgresql >/dev/null; then
    "${SUDO[@]}" apt-get update -q >/dev/null
    "${SUDO[@]}" apt-get install -y -q postgresql >/dev/null
fi
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || { say "apt-get finished but there is no initdb"; exit 1; }
say "installed $(ls -d /usr/lib/postgresql/*/ | head -1) in $((SECONDS - start)) s"
