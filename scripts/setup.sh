# Sourced by scripts/demo.sh and scripts/test.sh: makes a virtual environment
# if there is none, installs torch and the build/test tools, and builds and
# installs hardmix into it without build isolation (so it is compiled against
# the very torch it runs with). Safe to run again: it rebuilds incrementally.
#
# Settings (environment variables):
#   HARDMIX_VENV   the virtual environment          (default: .venv)
#   HARDMIX_TORCH  the torch requirement            (default: torch==2.13.0,
#                  the CPU build on this machine's disk; elsewhere any torch>=2.10)
#   HARDMIX_CUDA   AUTO | ON | OFF, build the CUDA kernels (default: AUTO)
#   HARDMIX_INTEGRATIONS  1 | 0, install the training frameworks of
#                  requirements-integrations.txt (default: 1; their tests are
#                  skipped without them)
#   PYTHON         the interpreter that makes the venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${HARDMIX_VENV:-.venv}"
TORCH_REQ="${HARDMIX_TORCH:-torch==2.13.0}"
CUDA_MODE="${HARDMIX_CUDA:-AUTO}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[hardmix] creating virtual environment $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "[hardmix] installing $TORCH_REQ and the build/test tools into $VENV" >&2
REQS=(-r requirements-dev.txt)
if [ "${HARDMIX_INTEGRATIONS:-1}" != 0 ]; then
  REQS+=(-r requirements-integrations.txt)
fi
"$PY" -m pip install -q "$TORCH_REQ" "${REQS[@]}"

echo "[hardmix] building hardmix against $("$PY" -c 'import torch; print(torch.__version__)') (CUDA: $CUDA_MODE)" >&2
"$PY" -m pip install -q --no-build-isolation --no-deps --force-reinstall \
  -Cbuild-dir="build/$(basename "$VENV")" \
  -Ccmake.define.HARDMIX_CUDA="$CUDA_MODE" .
