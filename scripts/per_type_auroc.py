"""Image AUROC of trained benchmark cells per anomaly type: each type's anomalies against every test normal.

Rebuilds each cell from its saved weights (``save_weights``), scores its test images with the torch model's
raw ``pred_score`` (before anomalib's normalisation, as the benchmark's ``raw_image_AUROC``), and prints one
JSON line per cell with the overall raw AUROC and the AUROC of each value of ``--column`` (ELPV:
``cell_type``, mono / poly) on the anomalous side. For DRA's hard protocol this separates the seen type
from the unseen one; for an unsupervised peer it gives the same split on its own test images.

    HF_HOME=.cache/hf HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/per_type_auroc.py \
        configs/benchmark/elpv_fewshot.yaml "Padim (unsupervised) s1" "DRA (K 1 general) s1"
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalib_hyperbolic.benchmark import trained_cell_for_testing, transformed_test_batches


def raw_scores(config_path: str, name: str, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw image scores, labels (1 = anomalous) and ``column`` values of cell ``name``'s test images."""
    datamodule, model = trained_cell_for_testing(config_path, name)
    samples = datamodule.test_data.samples.set_index("image_path")
    if column not in samples.columns:
        msg = f"--column {column!r} is not a column of the test samples {list(samples.columns)}."
        raise SystemExit(msg)
    scores, labels, groups = [], [], []
    with torch.no_grad():
        for batch in transformed_test_batches(datamodule, model):
            scores.append(model.model(batch.image).pred_score.float().flatten())
            labels.append(batch.gt_label.int().flatten())
            groups.extend(str(samples.loc[path, column]) for path in batch.image_path)
    return torch.cat(scores).numpy(), torch.cat(labels).numpy(), np.asarray(groups)


def per_type_auroc(config_path: str, name: str, column: str) -> dict[str, Any]:
    """``{"raw_image_AUROC": a, "<type>": {"auroc": a, "anomalies": n}, "normals": n}`` of one cell."""
    scores, labels, groups = raw_scores(config_path, name, column)
    normal = labels == 0
    result: dict[str, Any] = {"raw_image_AUROC": round(float(roc_auc_score(labels, scores)), 4)}
    result["normals"] = int(normal.sum())
    for group in sorted(set(groups[~normal])):
        keep = normal | (groups == group)
        result[group] = {
            "auroc": round(float(roc_auc_score(labels[keep], scores[keep])), 4),
            "anomalies": int((~normal & (groups == group)).sum()),
        }
    return result


def main() -> None:
    """Print one JSON line per cell."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("cells", nargs="+", help='cell names with their seed, e.g. "Padim (unsupervised) s1"')
    parser.add_argument("--column", default="cell_type", help="samples column naming the anomaly type")
    args = parser.parse_args()
    for cell in args.cells:
        print(json.dumps({"cell": cell, **per_type_auroc(args.config, cell, args.column)}), flush=True)


if __name__ == "__main__":
    main()
