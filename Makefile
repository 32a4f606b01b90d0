# Everything starts from python3: `make test` and `make demo` create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
# Every transitive version is pinned here, so a fresh clone installs what CI tested (refresh: make lock).
# LOCK= (empty) installs unpinned, e.g. beside another torch.
LOCK ?= requirements-lock.txt
# A CPU build of torch installs quickly; override for CUDA, e.g. make install TORCH="torch==2.5.1" LOCK=
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# The stamp names what was installed, so changing TORCH or LOCK installs again.
STAMP := $(VENV)/.installed-$(shell printf '%s' '$(TORCH) $(LOCK)' | cksum | cut -d' ' -f1)
CONSTRAINTS = $(if $(LOCK),-c $(LOCK))
RESULTS ?= results

.PHONY: install test lint demo bench clean plot report search lock test-latest

# Any study in experiments/: make study-NAME (e.g. make study-quadrants); ARGS passes options.
study-%: install
	$(BIN)/tau-lab sweep $* --results $(RESULTS) $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed*
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) "$(TORCH)"
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

# Refresh requirements-lock.txt on purpose: resolve the newest versions pyproject.toml allows (torch
# stays $(TORCH)) in a fresh venv, run lint + the suite there, and only then write the lock.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet "$(TORCH)" -e ".[dev,bench]"
	.venv-lock/bin/ruff check . && .venv-lock/bin/ruff format --check . && .venv-lock/bin/python -m pytest -n 2
	{ sed -n '1,2p' requirements-lock.txt; .venv-lock/bin/python -m pip freeze --exclude-editable \
	  | sed 's/^torch==\([^+]*\)+cpu$$/torch==\1/'; } > requirements-lock.txt.new
	mv requirements-lock.txt.new requirements-lock.txt

# Drift check: the newest versions pyproject.toml allows (torch stays $(TORCH)), in .venv-latest, then lint + suite.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade "$(TORCH)" -e ".[dev]"
	.venv-latest/bin/python -m pip freeze --exclude-editable > .venv-latest/versions.txt
	.venv-latest/bin/ruff check . && .venv-latest/bin/ruff format --check .
	.venv-latest/bin/python -m pytest -n 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n 2

# The quadrants study: five τ, fixed and learnable, 10,000 steps; then its figures and report.
demo: install
	$(BIN)/tau-lab sweep quadrants --results $(RESULTS)
	run=$$(ls -d $(RESULTS)/quadrants/*/ | sort | tail -n 1); \
	$(BIN)/tau-lab plot $$run && $(BIN)/tau-lab report $$run

# Figures and the report of a run: make plot RUN=results/quadrants/<run-id>
plot: install
	$(BIN)/tau-lab plot $(RUN)

report: install
	$(BIN)/tau-lab report $(RUN)

# Optuna searches, batched into populations (docs/search.md): distillation's T and α, contrastive τ.
# Running it again continues each study toward its --trials.
search: install
	$(BIN)/tau-lab search digits_kd_search --trials 32 --batch 8 --seed 0 --results $(RESULTS)
	$(BIN)/tau-lab search quadrants_search --trials 32 --batch 8 --seed 0 --results $(RESULTS)

# Speed against sequential per-member loops and the torch.func and JAX peers, measured in one run
# (docs/benchmarks.md); .[bench] adds JAX. make bench BENCH_ARGS=--quick is a smoke test of every path.
bench: install
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e ".[bench]"
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_block.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_threads.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_contrastive.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_distill.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_search.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-lock .venv-latest .pytest_cache .ruff_cache .hypothesis
