# Every target that needs the environment builds it first; a second `make setup` is a no-op
# until pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BENTOML_DO_NOT_TRACK := True
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: setup demo test bench lint format mlflow-ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench,bench-identity,fuzz]'
	touch $(STAMP)

demo: setup
	$(BIN)/nextbest demo

test: setup
	$(BIN)/python -m pytest -q -rs

bench: setup
	$(BIN)/nextbest bench features
	$(BIN)/nextbest bench decide

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

mlflow-ui: setup
	$(BIN)/nextbest mlflow-ui

clean:
	rm -rf .nextbest
