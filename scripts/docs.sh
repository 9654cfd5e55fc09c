#!/usr/bin/env bash
# The documentation: set up (scripts/setup.sh) and build docs/ with Sphinx
# into build/docs, warnings as errors. The API pages import the installed
# package, so the build uses the virtual environment's hardmix.
# Extra arguments go to sphinx-build.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
exec "$PY" -m sphinx -W --keep-going -q -b html "$@" docs build/docs
