#!/usr/bin/env bash
# Run a command from the book's Python environment, creating that environment first if needed.
#
#   scripts/env.sh python -m pytest ...
#   scripts/env.sh mkdocs build --strict
#   scripts/env.sh jupyter lab
#
# Which environment:
#   1. an active virtual environment ($VIRTUAL_ENV), else
#   2. an active conda environment ($CONDA_PREFIX), else
#   3. .venv/ in the repository, created with `python3 -m venv .venv` and filled with
#      `pip install -e ".[dev]"` when it is missing or pyproject.toml is newer than
#      .venv/.installed-stamp.
# An active environment is used as it is: if it lacks the book's packages this script says how
# to install them rather than installing into it.
# Set PYTHON=/path/to/python3.x to choose the interpreter that creates .venv (default: python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '[env] %s\n' "$*" >&2; }

# pip on this kind of machine prints one "Location ... is ignored" warning per package lookup;
# hide those, keep everything else, and keep pip's own exit status.
quiet_pip() {
    local py="$1"
    shift
    local statuses
    set +o pipefail
    "$py" -m pip "$@" 2>&1 | { grep -v -E "^WARNING: Location '.*' is ignored" || true; } >&2
    statuses=("${PIPESTATUS[@]}")
    set -o pipefail
    return "${statuses[0]}"
}

if [ -n "${VIRTUAL_ENV:-}" ]; then
    ENV_DIR="$VIRTUAL_ENV"
    KIND="active virtual environment"
elif [ -n "${CONDA_PREFIX:-}" ]; then
    ENV_DIR="$CONDA_PREFIX"
    KIND="active conda environment"
else
    ENV_DIR="$ROOT/.venv"
    KIND="repository venv"
    STAMP="$ENV_DIR/.installed-stamp"
    if [ ! -x "$ENV_DIR/bin/python" ]; then
        say "creating .venv with ${PYTHON:-python3} ($("${PYTHON:-python3}" --version 2>&1))"
        "${PYTHON:-python3}" -m venv "$ENV_DIR"
        rm -f "$STAMP"
    fi
    if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
        say "installing mlhelpers and the book's tools into .venv (pip install -e \".[dev]\"); this takes a few minutes the first time"
        start=$SECONDS
        if ! quiet_pip "$ENV_DIR/bin/python" install -q -e ".[dev]"; then
            say "pip install failed; .venv is left without a stamp so the next run retries"
            exit 1
        fi
        touch "$STAMP"
        say "installed in $((SECONDS - start)) s"
    fi
fi

BIN="$ENV_DIR/bin"
if [ ! -x "$BIN/python" ]; then
    say "no python at $BIN/python ($KIND $ENV_DIR); deactivate it or fix it"
    exit 1
fi

# The active environment must carry the book's tools; say so clearly instead of failing later.
if [ "$KIND" != "repository venv" ]; then
    if ! "$BIN/python" -c "import mlhelpers, pytest, xdist, nbval, jupytext, mkdocs, material, mkdocs_jupyter, mkdocstrings, mathjax, playwright" 2>/dev/null; then
        say "the $KIND at $ENV_DIR lacks mlhelpers or the book's tools."
        say "Install them with:  $BIN/python -m pip install -e \".[dev]\""
        say "or deactivate it, and make will create .venv/ for you."
        exit 1
    fi
fi

if [ "$#" -eq 0 ]; then
    echo "$BIN/python"
    exit 0
fi

cmd="$1"
shift
# Notebook kernels and subprocesses import this checkout's mlhelpers even if the environment has
# another checkout installed.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -x "$BIN/$cmd" ]; then
    exec "$BIN/$cmd" "$@"
fi
exec "$cmd" "$@"
