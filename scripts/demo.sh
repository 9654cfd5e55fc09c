#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh) and run `python -m hardmix demo`.
# Extra arguments go to the demo, e.g. scripts/demo.sh --seed 3
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
"$PY" -m pip install -q -r requirements-demo.txt
exec "$PY" -m hardmix demo "$@"
