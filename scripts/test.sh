#!/usr/bin/env bash
# The test suite: set up (scripts/setup.sh) and run pytest on tests/.
# Extra arguments go to pytest, e.g. scripts/test.sh -k margin -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
exec "$PY" -m pytest tests "$@"
