# `make demo` and `make test` set everything up on a fresh machine (Python 3.11+ and venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow test-all bench lint format clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ue-sweep

# The suite without the tests marked slow (scheduler jobs, multi-process groups, whole jobs);
# under 15 minutes on 2 idle cores. CI (.ci/run) runs the slow ones too.
test: $(STAMP)
	$(BIN)/pytest -m "not slow"

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

test-all: $(STAMP)
	$(BIN)/pytest

# Side-by-side speed ratios and the scale projection (benchmarks/), about 35 minutes on 2 cores;
# raw figures in benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
