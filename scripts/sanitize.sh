#!/usr/bin/env bash
# The native core under AddressSanitizer + UndefinedBehaviorSanitizer; fails
# on the first report (every check is fatal):
#   1. tests/native/policy_stream.cpp, a driver of csrc/kernels/policy.h on
#      random policies and streams, with its invariants checked as it runs
#      (then again, shorter, with each other build of the per-ISA kernels);
#   2. the extension built with both sanitizers (into build/sanitize-site, the
#      installed hardmix is untouched) and the tests of its ops: errors,
#      agreement with the reference, properties, sharded tables, corrupted
#      states (their subprocesses run under the sanitizers too), the pass's
#      shuffle order.
#
# Settings (environment variables):
#   HARDMIX_VENV      a venv made by scripts/setup.sh (default: .venv; made
#                     here, without the training frameworks, if missing)
#   SANITIZE_CONFIGS  policies the driver runs (default 300)
#   SANITIZE_STEPS    updates and draws per policy (default 1000)
#   SANITIZE_TESTS    all (default): the op tests below; quick: those of the
#                     ops' errors, the agreement with the reference, the
#                     corrupted states and the shuffle order
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${HARDMIX_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  HARDMIX_INTEGRATIONS=0 bash scripts/setup.sh
fi
PY="$VENV/bin/python"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
OUT=build/sanitize
SITE=build/sanitize-site
mkdir -p "$OUT"

echo "[sanitize] the policy driver: ${SANITIZE_CONFIGS:-300} policies x ${SANITIZE_STEPS:-1000} steps" >&2
g++ -std=c++17 -O1 -g -ffp-contract=off -Wall -Wextra -Werror $SAN -Icsrc/kernels \
  tests/native/policy_stream.cpp -o "$OUT/policy_stream"
"$OUT/policy_stream" --configs "${SANITIZE_CONFIGS:-300}" --steps "${SANITIZE_STEPS:-1000}" --seed 0
for isa in avx2 baseline; do  # (csrc/kernels/cpu_isa.h)
  HARDMIX_CPU_ISA=$isa "$OUT/policy_stream" --configs 100 --steps 300 --seed 1
done

echo "[sanitize] the extension built with the sanitizers, and its ops' tests" >&2
rm -rf "$SITE"
"$PY" -m pip install -q --no-build-isolation --no-deps --target "$SITE" \
  -Cbuild-dir="$OUT/build" -Ccmake.define.HARDMIX_CUDA=OFF \
  -Ccmake.define.CMAKE_CXX_FLAGS="$SAN -g -O1" \
  -Ccmake.define.CMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" .
# The ASan runtime must come first; libstdc++ with it, or ASan cannot find the
# real __cxa_throw (python itself does not link libstdc++) and aborts on the
# ops' first exception. Leaks: the interpreter's own, not ours.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$ROOT/$SITE"
"$PY" -c 'import hardmix, sys; assert hardmix.__file__.startswith(sys.argv[1]), hardmix.__file__' "$ROOT/$SITE"
# -s: a sanitizer's report goes to stderr, which pytest would otherwise hold
# back when the process aborts. Left out: the watchdog's test (it sends itself
# SIGSEGV on purpose, which ASan reports), the genuine states' (its time
# goes to the Python state checker, not to native code) and the per-ISA runs
# of the agreement tests (the driver above runs each build).
TESTS=(tests/test_engine_errors.py tests/test_policy_agreement.py tests/test_engine_state.py tests/test_order.py)
case "${SANITIZE_TESTS:-all}" in
  all) TESTS+=(tests/test_policy_properties.py tests/test_sharded.py) ;;
  quick) ;;
  *) echo "[sanitize] SANITIZE_TESTS must be all or quick, got '$SANITIZE_TESTS'" >&2; exit 2 ;;
esac
exec "$PY" -m pytest -q -s -p no:cacheprovider "${TESTS[@]}" \
  -k "not watchdog and not genuine_states and not every_instruction_set" "$@"
