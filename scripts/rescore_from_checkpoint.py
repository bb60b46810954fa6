"""Score a trained benchmark cell from its Lightning checkpoint, as the benchmark's test step would have.

The first EfficientAd cell (seed 0, 2026-12-05, code ee07d63) trained its 3,000 steps and then failed in
the test step (CategoryIoUThresholds indexed one past the end of 21.8 M pixel scores; fixed in 900c0f4).
anomalib's Engine had saved the fitted model (student, autoencoder, teacher statistics, map quantiles,
thresholds and normalisation) at the end of `fit`. This rebuilds the cell exactly as the benchmark does,
loads that state (`weights_only=True`) and runs the benchmark's test with its callbacks; training figures
(time, steps) are those of the fit's log, not of this run.

    HF_HOME=.cache/hf HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python scripts/rescore_from_checkpoint.py \
        configs/benchmark/mt_pdn_cpu.yaml "EfficientAd s0" CHECKPOINT OUTPUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from anomalib_hyperbolic.benchmark import load_config
from anomalib_hyperbolic.benchmark.cell_model import prepare_cell
from anomalib_hyperbolic.benchmark.cells import cell_engine, code_version, probability_maps
from anomalib_hyperbolic.benchmark.config import evaluation_split
from anomalib_hyperbolic.metrics import CategoryIoUThresholds, RawScoreMetrics


def main(config_path: str, name: str, checkpoint: str, output: str) -> None:
    """Rebuild cell ``name`` of a benchmark config, load ``checkpoint`` and write the test row to ``output``."""
    config = load_config(config_path)
    (spec,) = [spec for spec in config["models"] if spec["name"] == name]
    datamodule, split_sizes, model = prepare_cell(config, spec)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    raw_scores = RawScoreMetrics(pixel_metrics=True)
    thresholds = CategoryIoUThresholds(probability_threshold=0.5 if probability_maps(spec, model) else None)
    engine = cell_engine(config, spec, model, Path(output).parent / "rescore_run", callbacks=[raw_scores, thresholds])
    assert evaluation_split(config, spec) == "test"
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    row = {"name": name, "rescored_from_checkpoint": checkpoint, "checkpoint_global_step": state["global_step"]}
    row.update({key: float(value) for key, value in metrics.items()})
    row.update(raw_scores.results)
    row.update(thresholds.results)
    row.update(split_sizes=split_sizes, code_version=code_version(), evaluated_images=raw_scores.images)
    Path(output).write_text(json.dumps(row, indent=1))
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:5])
