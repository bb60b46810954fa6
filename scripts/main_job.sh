#!/usr/bin/env bash
# Set up .venv, then run the main job: SimpleNet next to anomalib's PatchCore on Magnetic Tile
# (default ../shared/datasets/magnetic_tile), both on offline ImageNet EfficientNet-Lite0 weights,
# trained with anomalib's Engine, exported to OpenVINO and scored with OpenVINO alone. Prints one
# side-by-side table; writes results/main_job/{metrics.json,table.md,overlays/}. Arguments go to the
# job (e.g. --data-root DIR --seed 1; `.venv/bin/anomalib-hyperbolic main-job --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/anomalib-hyperbolic main-job "$@"
