#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go, on a machine whose python3 has a
# CUDA build of torch >= 2.10 (nothing is downloaded):
#   1. install hardmix: a wheel from .whl/ if there is one (built elsewhere,
#      e.g. `pip wheel --no-build-isolation -Ccmake.define.HARDMIX_CUDA=ON -w .whl .`
#      in a CUDA-torch venv: the stable ABI lets it run on any torch >= 2.10),
#      else built here from source; the CUDA kernels must load;
#   2. the CUDA tests (pytest -m cuda);
#   3. benchmarks/bench_cuda.py (engine step on GPU vs CPU vs training steps);
#   4. compute-sanitizer memcheck over the CUDA engine tests (no caching
#      allocator, so every tensor is its own allocation and overruns show).
# Logs and the benchmark JSON go to $OUT (default out/gpu). Exit status: the
# first failing stage's.
#
#   bash scripts/gpu-check.sh            # everything
#   GPU_CHECK_TESTS="tests/test_engine_cuda.py" bash scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/hardmix-site}"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
rc=0
t0=$SECONDS
say() { echo "=== [gpu-check $((SECONDS - t0))s] $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'

install() {
  rm -rf "$SITE"
  if [ "$1" = wheel ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/hardmix-*.whl
  else
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" \
      -Cbuild-dir=/tmp/hardmix-build -Ccmake.define.HARDMIX_CUDA=ON \
      -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=native .
  fi && PYTHONPATH="$SITE" "$PY" -c 'import hardmix, sys; sys.exit(0 if hardmix.CUDA_KERNELS else 1)'
}
export PYTHONPATH="$SITE"
say "install"
if ! { ls .whl/hardmix-*.whl >/dev/null 2>&1 && install wheel; }; then
  say "no usable wheel: building from source"
  install source || { say "build failed"; exit 1; }
fi
"$PY" -m hardmix info | tee "$OUT/info.txt"

say "CUDA tests"
per_test=""  # a test that hangs the device is stopped, not the whole check
"$PY" -c 'import pytest_timeout' 2>/dev/null && per_test="--timeout 150"
# shellcheck disable=SC2086
timeout "${GPU_CHECK_TEST_S:-300}" "$PY" -m pytest ${GPU_CHECK_TESTS:-tests} -m cuda -q -p no:cacheprovider \
  -o addopts="" -rfEs $per_test 2>&1 | tee "$OUT/cuda-tests.log"
r=${PIPESTATUS[0]}; [ $rc -eq 0 ] && rc=$r

if [ "${GPU_CHECK_BENCH:-1}" = 1 ]; then
  say "benchmark"
  timeout "${GPU_CHECK_BENCH_S:-200}" "$PY" benchmarks/bench_cuda.py --json "$OUT/bench-cuda.json" \
    --budget-s "${GPU_CHECK_BUDGET_S:-120}" ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  r=${PIPESTATUS[0]}; [ $rc -eq 0 ] && rc=$r
fi
if [ "${GPU_CHECK_SANITIZER:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  say "compute-sanitizer memcheck"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${GPU_CHECK_SANITIZER_S:-120}" compute-sanitizer --tool memcheck \
    --error-exitcode 9 "$PY" -m pytest tests/test_engine_cuda.py -q -p no:cacheprovider -o addopts="" \
    -k "at_scale or bad_values or not_wait" 2>&1 | tail -40 | tee "$OUT/memcheck.log"
  r=${PIPESTATUS[0]}; [ $rc -eq 0 ] && rc=$r
fi
say "done, rc $rc"
exit $rc
