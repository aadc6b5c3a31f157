# Learning to Learn: the book's commands.
#
#   make book    build the website from the notebooks' stored outputs into site/
#   make test    lint, then run every test: tests/ and every notebook (executed in quick mode), and
#                the website in headless Chromium (Debian's chromium, installed with apt-get if missing)
#   make test-fast  the unit tests not marked slow (no notebooks, browser or site build), in under 2 minutes
#
# Both use the active virtualenv/conda environment if there is one, else create .venv/ here
# (see scripts/env.sh). `make help` lists the helpers.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ENV := scripts/env.sh
PYTEST_ARGS ?=
# Per-cell limit for notebooks under test; quick mode keeps every cell far below it.
CELL_TIMEOUT ?= 600
# Most worker processes `make test` starts (fewer on a machine with fewer cores).
TEST_WORKERS ?= 4
SERVE_ADDR ?= 127.0.0.1:8000
# notebooks/ is absent from a clone until the first chapter is committed (git keeps no empty dirs).
NOTEBOOKS := $(wildcard notebooks)

.PHONY: help env book serve browser postgres lint test test-fast test-unit test-notebooks run-notebooks lab sync clean distclean

# Material for MkDocs prints a banner about its future on every build; the book does not need it.
export NO_MKDOCS_2_WARNING := 1

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-15s %s\n", $$1, $$2}'

env: ## create/refresh the environment (.venv unless one is active) and print its python
	@$(ENV)

book: ## build the website into site/ (mkdocs build --strict)
	@$(ENV) python -m mkdocs build --strict

serve: ## serve the website with live reload (http://127.0.0.1:8000)
	@$(ENV) python -m mkdocs serve --dev-addr $(SERVE_ADDR)

# tests/test_browser.py opens the built site in Debian's chromium, driven by Playwright's Python
# package; nothing is downloaded from a browser vendor.
browser: ## install Debian's chromium for the browser test, if missing (apt-get)
	@scripts/install-browser.sh

# tests/test_hpo_postgres.py starts a throwaway cluster of Debian's PostgreSQL server (skips without it).
postgres: ## install Debian's PostgreSQL server for the shared-study test, if missing (apt-get)
	@scripts/install-postgres.sh

lint: ## lint and import order of every Python file (ruff, configured in pyproject.toml)
	@$(ENV) python -m ruff check .

# One pytest run for both, so one summary line counts everything.
# --nbval-lax: every cell must run without error; outputs (timings, random draws) are not
# compared unless a cell is marked NBVAL_CHECK_OUTPUT.
# --nbval-current-env: kernels run on the same interpreter as pytest (the environment's python),
# whatever kernelspec a notebook's metadata or the user's Jupyter directories name.
# Every notebook's kernel runs offline (conftest.py): a connection attempt fails its cell.
# -n: worker processes (pytest-xdist), one per core up to TEST_WORKERS; --dist loadfile keeps every
# test file, and every notebook (whose cells share one kernel), on one worker.
test: lint browser postgres ## lint, then every test: pytest on tests/ and every notebook in quick mode
	@MLHELPERS_QUICK=1 $(ENV) python -m pytest tests $(NOTEBOOKS) -n auto --maxprocesses=$(TEST_WORKERS) \
		--dist loadfile --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) $(PYTEST_ARGS)

# Tests marked @pytest.mark.slow (meta-training runs, the shipped learner's accuracy) are left out.
test-fast: ## the unit tests not marked slow: no notebooks, browser or site build (under 2 minutes)
	@MLHELPERS_QUICK=1 $(ENV) python -m pytest tests -m "not slow" \
		--ignore=tests/test_browser.py --ignore=tests/test_site.py $(PYTEST_ARGS)

test-unit: browser postgres ## run only tests/ (the website's browser test included)
	@MLHELPERS_QUICK=1 $(ENV) python -m pytest tests $(PYTEST_ARGS)

test-notebooks: ## run only the notebooks, in quick mode
ifeq ($(NOTEBOOKS),)
	@echo "no notebooks/ yet"
else
	@MLHELPERS_QUICK=1 $(ENV) python -m pytest notebooks \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) $(PYTEST_ARGS)
endif

# The website shows full runs: after changing a chapter, run it in full and commit its outputs.
# NB=notebooks/03_maml_from_scratch.ipynb runs one chapter; the default runs them all (slow).
# A second pass merges stream outputs (coalescing must follow execution), so each progress bar
# is stored as its final line.
NB ?= $(wildcard notebooks/[0-9]*.ipynb)
run-notebooks: ## execute notebooks at full budget, storing outputs in place (NB=path for one)
	@for nb in $(NB); do \
		echo "running $$nb in full"; \
		MLHELPERS_QUICK=0 $(ENV) jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=7200 "$$nb"; \
		$(ENV) jupyter nbconvert --to notebook --inplace --coalesce-streams "$$nb"; \
	done

lab: ## start JupyterLab in notebooks/ with the environment's python
	@$(ENV) jupyter lab --notebook-dir=notebooks

sync: ## re-sync each notebook with its .py twin (jupytext; the newer file wins)
	@shopt -s nullglob; nbs=(notebooks/*.ipynb); \
	if [ $${#nbs[@]} -gt 0 ]; then $(ENV) jupytext --sync "$${nbs[@]}"; else echo "no notebooks"; fi

clean: ## remove the built site and caches
	rm -rf site .pytest_cache .cache test-artifacts

distclean: clean ## also remove .venv
	rm -rf .venv
