PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck unit bench clean fmt screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# setup.py builds the compiled parts: the token counter (required) and the span writer (optional).
BUILD := pyproject.toml setup.py src/modelwire/_bpe.c src/modelwire/gateway/_spanwire.c

$(VENV)/.installed: $(BUILD) | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(BUILD) | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

# Real command-line clients for the end-to-end tests (Codex CLI, Claude Code, Gemini CLI), from the npm registry.
CLIENTS := tests/clients/node_modules/.installed
$(CLIENTS): tests/clients/package.json tests/clients/package-lock.json
	npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error
	touch $@

run: $(VENV)/.installed
	$(BIN)/modelwire serve

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

# Headless Chromium for the dashboard's browser tests, from Debian (installed once; we run as root).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null)

unit: $(VENV)/.installed-test $(CLIENTS) $(CHROMIUM)
	$(BIN)/pytest -n 2

test: lint typecheck unit

# The dashboard's pictures in docs/screenshots/ (the README shows them), taken by its browser test.
screenshots: $(VENV)/.installed-test $(CHROMIUM)
	MODELWIRE_SCREENSHOTS=1 $(BIN)/pytest -p no:xdist -q tests/test_dashboard.py -k round_trip

# Side by side with the floor and the peers (nginx + wrk from apt, peers under .bench/, on first use).
BENCH_ARGS ?= --floor --peers litellm,portkey --rounds 2 --seconds 6
bench: $(VENV)/.installed
	$(BIN)/python bench/compare.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

fmt: $(VENV)/.installed-test
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench
