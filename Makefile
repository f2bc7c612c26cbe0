# make run   - install into .venv, migrate, create the demo users, then run NATS, every service
#              and the web server
# make test  - install into .venv, then run the test suite (pass pytest options as ARGS="...")
# make lint  - ruff check and format check;  make format - apply ruff's fixes and formatting
# make clean - remove .venv and caches (var/, the local database and NATS data, is kept)

SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The first of these that is Python 3.12 or newer builds the venv.
PYTHON_CANDIDATES := python3.13 python3.12 python3
IS_NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 12))'
BASE_PYTHON = $(shell for candidate in $(PYTHON_CANDIDATES); do \
	if $$candidate $(IS_NEW_ENOUGH) >/dev/null 2>&1; then echo $$candidate; break; fi; done)

.PHONY: install run test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -e $(PYTHON) ] && ! $(PYTHON) $(IS_NEW_ENOUGH) >/dev/null 2>&1; then \
		echo "$(VENV) holds an old or broken Python; recreating it."; rm -rf $(VENV); fi
	@if [ ! -e $(PYTHON) ]; then \
		base="$(BASE_PYTHON)"; \
		if [ -z "$$base" ]; then \
			echo "error: Cliffracer needs Python 3.12 or newer, but none of" \
				"$(PYTHON_CANDIDATES) on PATH is. Install Python 3.12+ and retry." >&2; \
			exit 1; \
		fi; \
		echo "Creating $(VENV) with $$base ($$($$base --version))"; \
		$$base -m venv $(VENV); \
	fi
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e '.[dev]'
	@touch $@

run: $(STAMP)
	$(PYTHON) manage.py migrate --noinput
	$(PYTHON) manage.py demo_users
	exec $(PYTHON) manage.py runsystem

test: $(STAMP)
	$(PYTHON) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info test-artifacts
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
