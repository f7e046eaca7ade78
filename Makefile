# One entry point for every job. `make demo` and `make test` install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo serve test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.swarm

serve: $(STAMP)
	$(VENV)/bin/swarmgate serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Two processes, each taking whole files (module fixtures stay shared, a file's tests stay in
# order): the suite is mostly waiting on subprocesses and the database, not on one core.
PYTEST_ARGS ?= -n 2 --dist loadfile

pytest: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The whole test suite: lint, types, then every test (SQLite and PostgreSQL halves).
test: lint typecheck pytest

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
