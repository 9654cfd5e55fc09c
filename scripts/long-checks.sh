#!/usr/bin/env bash
# The checks too long for CI, after the same set-up as scripts/test.sh:
#   1. the corrupted-state fuzz: 10^4 engine states and 10^4 whole sampler
#      states (tests/engine_state_fuzz.py; CI runs a few hundred of each in
#      tests/test_engine_state.py)
#   2. the sanitizers' long run: scripts/sanitize.sh with 3,000 random
#      policies (CI runs 300)
#   3. the benchmarks (pytest benchmarks), their tables in out/bench.md
#   4. with --eval: the whole evaluation suite, 10 seeds (about an hour on
#      two cores), records in out/eval.json
# Exit status: the first failing check's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
mkdir -p out
rc=0
check() { "$@" || { s=$?; [ "$rc" -ne 0 ] || rc=$s; }; }
check "$PY" tests/engine_state_fuzz.py --cases "${FUZZ_CASES:-10000}" --seed "${FUZZ_SEED:-0}"
check "$PY" tests/engine_state_fuzz.py --sampler --cases "${FUZZ_CASES:-10000}" --seed "${FUZZ_SEED:-0}"
check env SANITIZE_CONFIGS="${SANITIZE_CONFIGS:-3000}" bash scripts/sanitize.sh
check "$PY" -m pytest benchmarks -q -p no:cacheprovider --benchmark-json out/bench.json
check bash -c "\"$PY\" benchmarks/table.py out/bench.json > out/bench.md"
if [ "${1:-}" = --eval ]; then
  check "$PY" -m hardmix eval --json out/eval.json
fi
exit "$rc"
