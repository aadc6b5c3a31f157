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

start=$SECONDS
status=0
"$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" postgres postgresql || status=$?
if [ "$status" -eq 2 ]; then
    say "tests/test_hpo_postgres.py skips without it"
    exit 0
elif [ "$status" -ne 0 ]; then
    exit "$status"
fi
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || { say "apt-get finished but there is no initdb"; exit 1; }
say "installed $(ls -d /usr/lib/postgresql/*/ | head -1) in $((SECONDS - start)) s"
