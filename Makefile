# Everything starts from python3: `make test` and `make demo` create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch installs quickly; override for CUDA, e.g. make install TORCH="torch==2.5.1"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RESULTS ?= results

.PHONY: install test lint demo bench clean plot report search

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

# Seed 001's study: five τ, fixed and learnable, 10,000 steps; then its figures and report.
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

# Speed against sequential per-member loops, measured in one run (docs/benchmarks.md).
# make bench BENCH_ARGS=--quick is a smoke test of every path.
bench: install
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_contrastive.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_distill.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_search.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
