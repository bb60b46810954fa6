#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run lint + the test suite (fast subset + bounded real-data smoke tests).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long real-data checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests scripts examples
.venv/bin/ruff format --check src tests scripts examples
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ "$#" -eq 0 ]; then
  set -- -m "not slow"
fi
# pytest exits 5 when it collects nothing: that fails this script too (set -e).
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
