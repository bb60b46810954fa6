"""How much OpenVINO's bf16 inference moves each benchmarked model's scores and metrics.

OpenVINO runs in bf16 by default on CPUs with bf16 units (about 2x faster than f32 there). This
script takes the OpenVINO models exported by a benchmark run (``runs/<cell>/export``), scores the
benchmark's test subset with ``INFERENCE_PRECISION_HINT`` f32 and bf16, and prints per model:
image AUROC and pixel AUROC in each precision, and the largest / mean absolute change of the image
score and of the anomaly map (both in anomalib's normalised [0, 1] units, as exported).

    python scripts/openvino_precision_effect.py --config configs/benchmark/magnetic_tile.yaml

Writes ``openvino_precision.md`` / ``.json`` next to the benchmark results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from torch.nn import functional

from anomalib_hyperbolic import benchmark


def _test_images(config: dict) -> list[tuple[torch.Tensor, int, torch.Tensor | None]]:
    data_cfg = config["data"]
    datamodule = benchmark._import(data_cfg["class_path"])(**data_cfg.get("init_args", {}))
    benchmark.apply_subset(datamodule, config.get("subset"))
    items = []
    for index in range(len(datamodule.test_data)):
        item = datamodule.test_data[index]
        items.append((item.image, int(item.gt_label), item.gt_mask))
    return items


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from torchmetrics.functional.classification import binary_auroc

    scores_t = torch.as_tensor(scores, dtype=torch.float64)
    scaled = (scores_t - scores_t.min()) / (scores_t.max() - scores_t.min()).clamp_min(1e-12)
    return float(binary_auroc(scaled, torch.as_tensor(labels).long()))


def _score(xml: Path, precision: str, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    names = [output.any_name for output in compiled.outputs]
    batch_dim = compiled.input(0).get_partial_shape()[0]
    graph_batch = batch_dim.get_length() if batch_dim.is_static else 1  # some exports have a fixed batch
    scores, maps = [], []
    for image in images:
        result = compiled([np.repeat(image, graph_batch, axis=0)])
        outputs = {name: np.asarray(result[compiled.output(name)])[:1] for name in names}
        scores.append(float(outputs["pred_score"].reshape(-1)[0]))
        maps.append(outputs["anomaly_map"].reshape(image.shape[-2:]))
    return np.asarray(scores), maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--max-images", type=int, default=0, help="score only the first N test images (0: all)")
    args = parser.parse_args()
    config = benchmark.load_config(args.config)
    output = Path(config["output"])
    size = int(config.get("latency_image_size", config.get("image_size", 256)))
    items = _test_images(config)
    if args.max_images:
        items = items[: args.max_images]
    images = [
        functional.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False).numpy()
        for image, _, _ in items
    ]
    labels = np.asarray([label for _, label, _ in items])
    masks = [
        None
        if mask is None
        else functional.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].numpy() > 0.5
        for _, _, mask in items
    ]
    rows = []
    for cell in sorted((output / "runs").iterdir()):
        xmls = sorted(cell.glob("export/**/*.xml"))
        if not xmls:
            continue
        figures = {"cell": cell.name}
        per_precision = {precision: _score(xmls[0], precision, images) for precision in ("f32", "bf16")}
        for precision, (scores, maps) in per_precision.items():
            figures[f"image_AUROC_{precision}"] = _auroc(scores, labels)
            if all(mask is not None for mask in masks):
                pixels = np.concatenate([anomaly_map.ravel() for anomaly_map in maps])
                truth = np.concatenate([mask.ravel() for mask in masks])
                figures[f"pixel_AUROC_{precision}"] = _auroc(pixels, truth)
        (scores32, maps32), (scores16, maps16) = per_precision["f32"], per_precision["bf16"]
        figures["max_abs_score_change"] = float(np.abs(scores32 - scores16).max())
        figures["mean_abs_score_change"] = float(np.abs(scores32 - scores16).mean())
        map_changes = [np.abs(a - b) for a, b in zip(maps32, maps16, strict=True)]
        figures["max_abs_map_change"] = float(max(change.max() for change in map_changes))
        figures["mean_abs_map_change"] = float(np.mean([change.mean() for change in map_changes]))
        rows.append(figures)
        print(json.dumps(figures), flush=True)
    (output / "openvino_precision.json").write_text(json.dumps(rows, indent=2))
    columns = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(benchmark._format(row.get(key)) for key in columns) + " |" for row in rows]
    (output / "openvino_precision.md").write_text("\n".join(lines) + f"\n\n{len(items)} test images, {size} px\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
