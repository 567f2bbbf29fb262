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
# The request path's modules compiled with mypyc, in place (setup.py, docs/benchmarks.md):
# 1 compiles before the tests and the benchmark, and fails without a C compiler and the Python
# headers; 0 removes the compiled modules and tests pure Python; auto compiles when both exist.
COMPILE ?= auto
PACKAGE_SOURCES := $(shell find ingress routing tls -name '*.py')
COMPILED_STAMP := build/.compiled-in-place
# at any depth: ingress/ has sub-packages (docs/architecture.md)
IN_PLACE_EXTENSIONS = $(shell find ingress routing tls -name '*.so')
# What tests/conftest.py requires to be loaded: no guess when COMPILE says which.
EXPECT_BUILD := $(if $(filter 1,$(COMPILE)),compiled,$(if $(filter 0,$(COMPILE)),python,))

.PHONY: install compile pure build-for-tests test lint typecheck unit integration demo bench \
	loadtest clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "cannot create a virtualenv: apt-get install python3-venv"; exit 1; }
	$(VENV)/bin/pip install --quiet --upgrade pip 'setuptools>=77'
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $@

install: $(VENV)/.installed

# Python imports an in-place extension before the .py beside it, so they are rebuilt whenever a
# source changes (tests/conftest.py refuses stale ones): all removed first, so that one of a
# module taken off the list cannot stay, then dated now, since setuptools copies an unchanged
# module stub (the code is in the shared ingress/_compiled__mypyc) with its old date.
$(COMPILED_STAMP): $(VENV)/.installed $(PACKAGE_SOURCES) pyproject.toml setup.py
	rm -f $(IN_PLACE_EXTENSIONS)
	MTA_INGRESS_COMPILE=1 $(VENV)/bin/python setup.py --quiet build_ext --inplace
	@find ingress routing tls -name "*.so" -exec touch {} +
	@mkdir -p $(dir $@) && touch $@

compile: $(COMPILED_STAMP)

pure:
	rm -f $(IN_PLACE_EXTENSIONS) $(COMPILED_STAMP)

build-for-tests: install
ifeq ($(COMPILE),1)
	@$(MAKE) --no-print-directory compile
else ifeq ($(COMPILE),0)
	@$(MAKE) --no-print-directory pure
else
	@if command -v cc >/dev/null 2>&1 && $(VENV)/bin/python -c 'import os, sysconfig, sys; \
	    sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; \
	then $(MAKE) --no-print-directory compile; \
	else echo "no C compiler or Python headers: testing pure Python (COMPILE=1 requires them)"; \
	    $(MAKE) --no-print-directory pure; fi
endif

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint --failure-threshold style --no-color Dockerfile

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck build-for-tests
	MTA_INGRESS_EXPECT_BUILD=$(EXPECT_BUILD) $(VENV)/bin/pytest $(PYTEST_ARGS)

unit: build-for-tests
	MTA_INGRESS_EXPECT_BUILD=$(EXPECT_BUILD) $(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

integration: build-for-tests
	MTA_INGRESS_EXPECT_BUILD=$(EXPECT_BUILD) $(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/mta-ingress demo $(DEMO_ARGS)

$(BENCH_VENV)/.installed: pyproject.toml
	$(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e .
	@touch $@

# The benchmark measures what the image ships: the compiled build (made by .venv's Python;
# the extensions serve any CPython 3.11, BENCH_PYTHON's included).
bench: $(BENCH_VENV)/.installed compile
	$(BENCH_VENV)/bin/python loadtest/bench.py $(BENCH_ARGS)

loadtest: install
	$(VENV)/bin/python -m loadtest.run $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info $(IN_PLACE_EXTENSIONS) .pytest_cache .mypy_cache .ruff_cache .hypothesis
