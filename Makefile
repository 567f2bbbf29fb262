# Quick start: `make demo` and `make test`; each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
# Benchmarks run on Debian's Python: built with PGO and LTO like the official container images.
BENCH_PYTHON ?= /usr/bin/python3.11
BENCH_VENV ?= .venv-bench
BENCH_ARGS ?=
PYTEST_ARGS ?=
DEMO_ARGS ?=  # e.g. DEMO_ARGS="--base-port 30000" where the demo's ports are taken
LOADTEST_ARGS ?=  # e.g. LOADTEST_ARGS="--duration 120 --users 80 --fault rolling" (docs/loadtesting.md)

.PHONY: install test lint typecheck unit integration demo bench loadtest clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "cannot create a virtualenv: apt-get install python3-venv"; exit 1; }
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint --failure-threshold style --no-color Dockerfile

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: install
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/mta-ingress demo $(DEMO_ARGS)

$(BENCH_VENV)/.installed: pyproject.toml
	$(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e .
	@touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python loadtest/bench.py $(BENCH_ARGS)

loadtest: install
	$(VENV)/bin/python -m loadtest.run $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
