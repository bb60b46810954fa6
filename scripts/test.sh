#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run lint + the test suite (fast subset + bounded real-data smoke tests).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long real-data checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests scripts examples
.venv/bin/ruff format --check src tests scripts examples
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
if [ "$#" -eq 0 ]; then
  set -- -m "not slow"
fi
# Two pytest workers, one per core, one file per worker at a time (a module's fixtures are built once,
# and files that start processes or ports do not race themselves); one torch thread per worker.
# TEST_WORKERS=0 runs everything in this process.
WORKERS=${TEST_WORKERS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$([ "$WORKERS" = 0 ] && echo 2 || echo 1)}
# pytest exits 5 when it collects nothing: that fails this script too (set -e).
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 -n "$WORKERS" --dist loadfile "$@"
