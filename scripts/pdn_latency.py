"""OpenVINO latency of the PDN models side by side: EfficientAd, HypAD and HypAD's ablations (issue "HypAD v3").

Every model is built untrained (latency depends on shapes only; a random teacher, no penalty images),
exported with its own ``to_openvino`` (HypAD keeps its float32 scopes, as a user's export does), compiled
at float32 and at the device's default precision (bf16 on CPUs with bf16 units), and timed at batch 1
on 256 px: calls are interleaved over the models, round after round, so that a drift of the machine's
speed touches every model alike; the figure is the median call.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/pdn_latency.py --output docs/results/pdn_latency/latency.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from anomalib.models import EfficientAd

from anomalib_hyperbolic.models import HypAD
from anomalib_hyperbolic.openvino_runtime import compile_model

#: name -> HypAD arguments (None: anomalib's EfficientAd)
MODELS: dict[str, dict[str, Any] | None] = {
    "EfficientAd": None,
    "HypAD (c 0.01, clip 2.3, pooling)": {},
    "clipping only (c 0, clip 2.3, no pooling)": {"c": 0.0, "projection": "identity"},
    "curvature only (c 0.01, no clipping)": {"clip_radius": math.inf},
}


def build(arguments: dict[str, Any] | None) -> torch.nn.Module:
    """An untrained model as a user exports it."""
    torch.manual_seed(0)
    if arguments is None:
        return EfficientAd()
    return HypAD(pretrained_teacher=False, imagenet_dir=None, **arguments)


def main() -> None:
    """Export, compile and time every model; print a table and optionally write the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="timed rounds (one call per model and precision)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the figures")
    args = parser.parse_args()
    size = args.image_size
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    requests: dict[tuple[str, str], Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, arguments) in enumerate(MODELS.items()):
            model = build(arguments).eval()
            xml = model.to_openvino(export_root=Path(scratch) / str(index), input_size=(size, size))
            for precision in ("f32", "default"):
                requests[name, precision] = compile_model(xml, precision).create_infer_request()
    for _ in range(args.warmup):
        for request in requests.values():
            request.infer([image])
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in requests}
    for _ in range(args.runs):
        for key, request in requests.items():
            start = time.perf_counter()
            request.infer([image])
            seconds[key].append(time.perf_counter() - start)
    milliseconds = {key: 1000 * median(values) for key, values in seconds.items()}
    reference = {precision: milliseconds["EfficientAd", precision] for precision in ("f32", "default")}
    print(f"batch 1, {size} px, median of {args.runs} interleaved calls, {platform.processor() or platform.machine()}")
    print("| model | f32 ms | vs EfficientAd | default ms | vs EfficientAd |")
    print("|---|---|---|---|---|")
    rows = []
    for name in MODELS:
        f32, default = milliseconds[name, "f32"], milliseconds[name, "default"]
        ratio_f32, ratio_default = f32 / reference["f32"], default / reference["default"]
        print(f"| {name} | {f32:.1f} | {ratio_f32:.3f}x | {default:.1f} | {ratio_default:.3f}x |")
        rows.append({"model": name, "f32_ms": f32, "default_ms": default, "f32_ratio": ratio_f32})
        rows[-1]["default_ratio"] = ratio_default
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        record = {"image_size": size, "runs": args.runs, "machine": platform.processor(), "rows": rows}
        args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
