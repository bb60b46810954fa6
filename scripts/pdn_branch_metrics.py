"""Which branch of a trained PDN cell (EfficientAd, HypAD) localises: metrics of its two maps apart.

EfficientAD's anomaly map is ``0.5 map_st + 0.5 map_stae`` (student-teacher and student-autoencoder
discrepancies, each normalised by its validation quantiles). This rebuilds a trained ``mt_pdn_cpu``-style
cell from its saved weights (``save_weights``), scores the cell's test images with each map alone and
with their sum, and prints image AUROC (max of the map), pixel AUROC and AUPRO for each (the benchmark's
raw columns: :class:`~anomalib_hyperbolic.metrics.RawScoreMetrics`). With ``--norms N`` it prints instead,
for a HypAD cell, the norms of the projected (pooled) teacher and student vectors on the first N test
batches, and the share longer than the clipping radius (those the clipping shortens to ``r``).

    HF_HOME=.cache/hf HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/pdn_branch_metrics.py \
        configs/benchmark/mt_pdn_cpu.yaml "EfficientAd s0" "HypAD (c 0.01, clip 2.3) s0"
    ... scripts/pdn_branch_metrics.py --norms 3 configs/benchmark/mt_pdn_cpu.yaml "HypAD (c 0.01, clip 2.3) s0"
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from anomalib_hyperbolic.benchmark import trained_cell_for_testing, transformed_test_batches
from anomalib_hyperbolic.metrics import MetricFields, RawScoreMetrics


def tangent_norms(config_path: str, name: str, batches: int) -> dict[str, Any]:
    """Quantiles (1 %, 50 %, 99 %) of the projected teacher / student vector norms, share above ``clip_radius``."""
    datamodule, model = trained_cell_for_testing(config_path, name)
    network = model.model
    norms: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    with torch.no_grad():
        for _, batch in zip(range(batches), transformed_test_batches(datamodule, model), strict=False):
            teacher = network._normalize_teacher(network.teacher(batch.image))
            student = network.student(batch.image)[:, : network.teacher_out_channels]
            for key, output in (("teacher", teacher), ("student", student)):
                norms[key].append(network.projection(output).norm(dim=1).flatten())
    results: dict[str, Any] = {"clip_radius": network.clip_radius}
    for key, values in norms.items():
        value = torch.cat(values)
        quantiles = torch.quantile(value, torch.tensor([0.01, 0.5, 0.99]))
        results[key] = {
            "norm_q01_q50_q99": [round(float(q), 2) for q in quantiles],
            "share_above_clip_radius": round(float((value > network.clip_radius).double().mean()), 4),
        }
    return results


def branch_metrics(config_path: str, name: str) -> dict[str, dict[str, float]]:
    """``{"st" | "stae" | "combined": {metric: value}}`` of cell ``name`` of the benchmark config."""
    datamodule, model = trained_cell_for_testing(config_path, name)
    scorers = {key: RawScoreMetrics() for key in ("st", "stae", "combined")}  # the benchmark's raw columns
    for scorer in scorers.values():
        scorer.on_test_epoch_start(None, model)
    with torch.no_grad():
        for batch in transformed_test_batches(datamodule, model):
            student_output, distance_st = model.model.compute_student_teacher_distance(batch.image)
            map_st, map_stae = model.model.compute_maps(batch.image, student_output, distance_st)
            for key, anomaly_map in (("st", map_st), ("stae", map_stae), ("combined", 0.5 * map_st + 0.5 * map_stae)):
                outputs = MetricFields(
                    batch_size=len(anomaly_map),
                    anomaly_map=anomaly_map[:, 0],
                    pred_score=anomaly_map.amax(dim=(-3, -2, -1)),
                    gt_label=batch.gt_label,
                    gt_mask=batch.gt_mask,
                )
                scorers[key].on_test_batch_end(None, model, outputs)
    results = {}
    for key, scorer in scorers.items():
        scorer.on_test_epoch_end(None, model)
        results[key] = {name.removeprefix("raw_"): round(value, 4) for name, value in scorer.results.items()}
    return results


def main() -> None:
    """Print one JSON line per cell: its branch metrics, or with ``--norms N`` its tangent norms."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("cells", nargs="+")
    parser.add_argument("--norms", type=int, default=0, help="print tangent norms over this many test batches")
    args = parser.parse_args()
    score = (lambda config, cell: tangent_norms(config, cell, args.norms)) if args.norms else branch_metrics
    for cell in args.cells:
        figures = score(args.config, cell)
        print(json.dumps({"cell": cell, **figures}), flush=True)


if __name__ == "__main__":
    main()
