"""CPU latency of SimpleNet next to PatchCore with the memory bank it keeps when trained on the full split.

The benchmark's CPU runs train on a subset (a quarter of the Magnetic Tile training images), which
shrinks PatchCore's memory bank, and with it PatchCore's nearest-neighbour search, 4x. This script
times, in one process on one machine, the models of a benchmark config (untrained: weights do not
change latency) with PatchCore's bank filled with random values of the size its coreset keeps on
the *full* training split, and of the size it keeps on the subset (to check against the benchmark's
own figures). Batch 1, the config's image size, PyTorch and OpenVINO (the config's precision).

    HF_HOME=.cache/hf HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python \\
        scripts/simplenet_latency_full_bank.py --config configs/benchmark/simplenet_long_confirm.yaml \\
        --out docs/results/simplenet_long_confirm/latency_full_bank.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from anomalib_hyperbolic.benchmark import _import, _prepare, build_model, load_config, time_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/benchmark/simplenet_long_confirm.yaml")
    parser.add_argument("--out", default=None, help="JSON file for the figures (printed either way)")
    parser.add_argument("--runs", type=int, default=30)
    return parser.parse_args()


def full_train_size(config: dict[str, Any]) -> int:
    """Training images of the config's datamodule without the benchmark's subset cut."""
    data = config["data"]
    datamodule = _import(data["class_path"])(**data.get("init_args", {}))
    datamodule.setup()
    return len(datamodule.train_data)


def patchcore_bank_sizes(config: dict[str, Any], spec: dict[str, Any], train_images: int) -> tuple[int, int]:
    """``(entries, dims)`` of the coreset PatchCore keeps from ``train_images`` images at the config's size."""
    model = build_model(config, spec).model
    size = int(config.get("image_size", 256))
    with torch.no_grad():
        features = model.feature_extractor(torch.zeros(1, 3, size, size))
        features = {layer: model.feature_pooler(feature) for layer, feature in features.items()}
        embedding = model.generate_embedding(features)
    locations = embedding.shape[-2] * embedding.shape[-1]
    ratio = float(spec.get("init_args", {}).get("coreset_sampling_ratio", 0.1))
    return int(train_images * locations * ratio), int(embedding.shape[1])


def main() -> None:
    args = parse_args()
    config = load_config(args.config)
    settings = {**(config.get("latency") or {}), "runs": args.runs, "batch_sizes": [1]}
    _, subset_sizes, _ = _prepare(config, config["models"][0])
    full = full_train_size(config)
    rows = []
    seen: set[str] = set()
    for spec in config["models"]:
        class_name = spec["class_path"].rsplit(".", 1)[-1]
        # latency depends on the architecture, not on seeds, epochs or SimpleNet's training-only options
        arch = {k: v for k, v in spec.get("init_args", {}).items() if not k.startswith(("synthetic", "noise"))}
        key = json.dumps({"class": class_name, **arch}, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        if class_name == "Patchcore":
            for label, images in (("full split", full), ("benchmark subset", subset_sizes["train"])):
                entries, dims = patchcore_bank_sizes(config, spec, images)
                model = build_model(config, copy.deepcopy(spec))
                torch.manual_seed(0)
                model.model.memory_bank = torch.randn(entries, dims)
                figures = time_model(config, model, settings=settings)
                rows.append(
                    {
                        "model": f"{spec['name']}, bank of the {label} ({images} images)",
                        "bank": [entries, dims],
                        **figures,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        else:
            model = build_model(config, spec)
            figures = time_model(config, model, settings=settings)
            name = spec["name"].rsplit(" s", 1)[0] if spec.get("seed") is not None else spec["name"]
            rows.append({"model": name, **figures})
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "config": args.config,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "settings": settings,
        "full_train_images": full,
        "subset_train_images": subset_sizes["train"],
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        torch_ms = row.get("torch_latency_ms_b1", math.nan)
        ov_ms = row.get("openvino_latency_ms_b1", math.nan)
        print(f"{row['model']:90s} torch {torch_ms:8.1f} ms   OpenVINO {ov_ms:8.1f} ms")


if __name__ == "__main__":
    main()
