# Every target that needs the environment builds it first; a second `make setup` is a no-op
# until pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BENTOML_DO_NOT_TRACK := True
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: setup demo test bench lint format mlflow-ui clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench,fuzz]'
	touch $(STAMP)

# `make demo ARGS=--serve` leaves the service running and prints the console's address
demo: setup
	$(BIN)/nextbest demo $(ARGS)

# two workers, a file each at a time (module fixtures such as a served home stay per file)
test: setup chromium
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile

# the console's browser test needs Debian's chromium: installed here when missing and root,
# else the test skips and says why
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	      echo "could not install chromium: the console's browser test will skip"; \
	  else echo "no chromium and not root: the console's browser test will skip"; fi

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
