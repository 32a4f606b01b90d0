# Everything starts from python3: `make test` and `make demo` create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch installs quickly; override for CUDA, e.g. make install TORCH="torch==2.5.1"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RESULTS ?= results

.PHONY: install test lint demo bench clean

# Any study in experiments/: make study-NAME (e.g. make study-quadrants); ARGS passes options.
study-%: install
	$(BIN)/tau-lab sweep $* --results $(RESULTS) $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n 2

# Seed 001's study: five τ, fixed and learnable, 10,000 steps; then its summary.
demo: install
	$(BIN)/tau-lab sweep quadrants --results $(RESULTS)

bench: install
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
