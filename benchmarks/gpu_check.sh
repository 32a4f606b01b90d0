#!/usr/bin/env bash
# On a CUDA machine: the CUDA-marked tests (tests/test_cuda.py), then benchmarks/bench.py with the engine and
# the torch.func peers on the GPU at K ∈ {5, 100, 1000, 10000}; everything in one markdown file.
#
#   bash benchmarks/gpu_check.sh [OUT.md]        (default gpu-check.md; PYTHON=.venv/bin/python to choose python)
#   BENCH_ARGS="--quick" bash benchmarks/gpu_check.sh   (a smoke test: tiny step counts, one round)
#
# The seed loop stays on the CPU (it is the CPU baseline); the JAX rows use JAX's default device (its CPU when
# only jax[cpu] is installed, or skipped when JAX is absent). Exits non-zero when a CUDA test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}  # JAX would take 75 % of the GPU from torch
PY=${PYTHON:-python}
OUT=${1:-gpu-check.md}
$PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run this on a CUDA machine")'
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

status=0
$PY -m pytest -m cuda -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tee "$scratch/tests.txt" || status=$?
# bench.py imports this checkout's tau_lab, not an installed one
# shellcheck disable=SC2086  # BENCH_ARGS holds several options
PYTHONPATH=$PWD $PY benchmarks/bench.py --device cuda --ks 5,100,1000,10000 --no-end-to-end --no-profile \
    --markdown "$scratch/bench.md" --json "${OUT%.md}.json" ${BENCH_ARGS:-}

{
    cat "$scratch/bench.md"
    echo
    echo "## CUDA-marked tests: \`$PY -m pytest -m cuda tests/test_cuda.py\` (exit $status)"
    echo
    echo '```'
    tail -n 20 "$scratch/tests.txt"
    echo '```'
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
    echo '```'
} > "$OUT"
echo "written: $OUT"
exit "$status"
