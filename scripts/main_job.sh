#!/usr/bin/env bash
# Set up and run the main job: train + test a model of this package on ELPV (real solar-cell
# images from the elpv-dataset PyPI package) with real ImageNet weights provisioned offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/anomalib-hyperbolic main-job "$@"
