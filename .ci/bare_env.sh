#!/usr/bin/env bash
# The audited wheel (wheelhouse/, from scripts/wheel.sh) in a fresh venv that
# holds torch ($1, e.g. torch==2.14.1), the test tools and nothing to build
# with: no pip, scikit-build-core, cmake or ninja (setuptools only where torch
# requires it). There, with no compiler on PATH: `python -m hardmix info` and
# the README's quickstart; then the CPU tests (PATH as usual: torch.compile's
# inductor compiles its own C++).
# The venv: $BARE_VENV (default .venv-bare), made afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_REQ="$1"
BARE="${BARE_VENV:-.venv-bare}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
rm -rf "$BARE"
python3 -m venv --without-pip "$BARE"
# pip from the interpreter that made the venv, pointed at the bare one: the
# venv gets no pip, setuptools or wheel of its own.
python3 -m pip --python "$BARE/bin/python" install -q "$TORCH_REQ"
WHEEL=$(ls wheelhouse/hardmix-*.whl)
python3 -m pip --python "$BARE/bin/python" install -q --only-binary :all: --no-deps "$WHEEL"
python3 -m pip --python "$BARE/bin/python" install -q --only-binary :all: -r requirements-test.txt

# Build tools: none, but what torch itself requires (torch 2.14 requires setuptools).
"$BARE/bin/python" - <<'PY'
import importlib.metadata as md
import re
torch_needs = {re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in md.requires("torch") or []}
tools = {"pip", "setuptools", "wheel", "scikit-build-core", "cmake", "ninja", "pybind11", "meson", "meson-python"}
found = sorted(d.metadata["Name"] for d in md.distributions()
               if d.metadata["Name"].lower().replace("_", "-") in tools - torch_needs)
if found:
    raise SystemExit(f"[bare] build tools in the bare venv: {found}")
print("[bare] build tools: none (torch itself requires:", sorted(tools & torch_needs) or "none", ")")
PY

# Only the venv's own bin on PATH: no gcc, g++, cc, cmake, ninja or nvcc.
NOBUILD="$(pwd)/$BARE/bin"
for tool in gcc g++ cc c++ cmake ninja nvcc; do
  if PATH="$NOBUILD" command -v "$tool" >/dev/null; then
    echo "[bare] $tool is reachable" >&2
    exit 1
  fi
done
PY="$BARE/bin/python"
PATH="$NOBUILD" "$PY" -c 'import hardmix; assert "site-packages" in hardmix.__file__, hardmix.__file__'
PATH="$NOBUILD" "$PY" -m hardmix info
PATH="$NOBUILD" "$PY" -m pytest -q -p no:cacheprovider tests/test_sampler.py -k readme_quickstart
"$PY" -m pytest -q -p no:cacheprovider -n 2 tests -m "not eval and not integration and not docs and not fuzz"
