# Everyday targets; the same commands run locally, in hooks and in CI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080

.PHONY: install test test-unit lint format typecheck serve clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv with the service and dev tools

test: install  ## the whole suite (installs what it needs)
	$(BIN)/python -m pytest

test-unit: install  ## fast tests only
	$(BIN)/python -m pytest -m "not integration and not vllm"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy

serve: install  ## the API on the shipped config
	$(BIN)/extraction serve --port $(PORT)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
