# driftax: `make demo` and `make test` each set up .venv from scratch (idempotently) and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow" -n 2

.PHONY: setup demo test test-all reproduce lint format bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) benchmarks/demo --out out

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

reproduce: $(STAMP)
	$(PY) benchmarks/reproductions --out out

test-all: $(STAMP)
	$(PY) -m pytest -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check driftax tests benchmarks
	$(VENV)/bin/ruff format --check driftax tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format driftax tests benchmarks
	$(VENV)/bin/ruff check --fix driftax tests benchmarks

clean:
	rm -rf out .pytest_cache
