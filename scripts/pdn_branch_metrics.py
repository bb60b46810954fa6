"""Which branch of a trained PDN cell (EfficientAd, HypAD) localises: metrics of its two maps apart.

EfficientAD's anomaly map is ``0.5 map_st + 0.5 map_stae`` (student-teacher and student-autoencoder
discrepancies, each normalised by its validation quantiles). This rebuilds a trained ``mt_pdn_cpu``-style
cell from its saved weights (``save_weights``), scores the cell's test images with each map alone and
with their sum, and prints image AUROC (max of the map), pixel AUROC and AUPRO for each (anomalib's
metrics on min-max rescaled maps, as the benchmark's raw columns).

    HF_HOME=.cache/hf HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/pdn_branch_metrics.py \
        configs/benchmark/mt_pdn_cpu.yaml "EfficientAd s0" "HypAD (c 0.01, clip 2.3) s0"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from anomalib_hyperbolic.benchmark import load_config, load_trained_state, prepare_cell, weights_file
from anomalib_hyperbolic.metrics import MetricFields, threshold_free_metrics


def branch_metrics(config_path: str, name: str) -> dict[str, dict[str, float]]:
    """``{"st" | "stae" | "combined": {metric: value}}`` of cell ``name`` of the benchmark config."""
    config = load_config(config_path)
    (spec,) = [spec for spec in config["models"] if spec["name"] == name]
    datamodule, _, model = prepare_cell(config, spec)
    state = torch.load(weights_file(Path(config["output"]), name), map_location="cpu", weights_only=True)
    load_trained_state(model, state)
    model.eval()
    datamodule.setup("test")
    maps: dict[str, list[torch.Tensor]] = {"st": [], "stae": [], "combined": []}
    labels, masks = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            if model.pre_processor.transform is not None:  # as its on_test_batch_start: image and mask
                batch.image, batch.gt_mask = model.pre_processor.transform(batch.image, batch.gt_mask)
            image = batch.image
            student_output, distance_st = model.model.compute_student_teacher_distance(image)
            map_st, map_stae = model.model.compute_maps(image, student_output, distance_st)
            for key, value in (("st", map_st), ("stae", map_stae), ("combined", 0.5 * map_st + 0.5 * map_stae)):
                maps[key].append(value[:, 0])
            labels.append(batch.gt_label)
            masks.append(batch.gt_mask)
    results = {}
    for key, values in maps.items():
        anomaly_map = torch.cat(values).double()
        anomaly_map = (anomaly_map - anomaly_map.min()) / (anomaly_map.max() - anomaly_map.min())
        fields = MetricFields(
            anomaly_map=anomaly_map,
            pred_score=anomaly_map.amax(dim=(-2, -1)),
            gt_label=torch.cat(labels),
            gt_mask=torch.cat(masks),
        )
        results[key] = {}
        for metric in threshold_free_metrics():
            metric.update(fields)
            results[key][metric.name] = round(float(metric.compute()), 4)
    return results


if __name__ == "__main__":
    for cell in sys.argv[2:]:
        print(json.dumps({"cell": cell, **branch_metrics(sys.argv[1], cell)}), flush=True)
