# The entry points: `make demo`, `make test`, `make lint`, `make bench`.
# Each creates .venv with `python3 -m venv` when missing and installs what it needs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-base

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/python -m examples.shop.demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.store
	$(BIN)/python -m benchmarks.bus
	$(BIN)/python -m benchmarks.backlog
	$(BIN)/python -m benchmarks.sagas
	$(BIN)/python -m benchmarks.poison
	$(BIN)/python -m benchmarks.tracing

clean:
	rm -rf $(VENV) .tidings .pytest_cache .mypy_cache .ruff_cache
