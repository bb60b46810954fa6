"""Seconds per HADNet training step with and without the feature cache (docs/models/hadnet.md, "Feature cache").

Magnetic Tile at 256 px, batch 8, the Lite0 cell of configs/benchmark/mt_cpu.yaml / mt_supervised.yaml, on a
seeded 48-image training subset (6 steps an epoch); 1 + ``--epochs`` epochs per run, steps of the first epoch
(cache filling) not counted; no validation. Stage 1 is cut to 2 + 2 + 2 batches (not timed). Then the parts
that stay live with the cache: Perlin synthesis and the backbone, per batch of 8.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/hadnet_feature_cache_timing.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any

import torch
from anomalib.engine import Engine
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from anomalib_hyperbolic.data import MagneticTile
from anomalib_hyperbolic.models import HADNet

LITE0 = {
    "backbone": ".cache/weights/tf_efficientnet_lite0.safetensors",
    "layers": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    "num_selected": [24, 40, 56, 40],
    "num_residuals": 64,
    "discriminator_widths": [64, 16, 8],
}


class StepTimer(Callback):
    """Wall seconds of every training step (batch start to batch end: forward, backward, optimiser), per epoch."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps.append((trainer.current_epoch, time.perf_counter() - self._start))


def run(mode: str, cache: bool, epochs: int, images: int) -> dict[str, Any]:
    """One seeded fit; the mean and median step time after the first epoch, and the cache's hit rate."""
    seed_everything(0, workers=True)
    split = {"split_mode": "ratio", "split_ratios": [0.8, 0.1, 0.1]} if mode == "supervised" else {}
    datamodule = MagneticTile(
        root="../shared/datasets/magnetic_tile",
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
        split_seed=0,
        **split,
    )
    datamodule.setup(TrainerFn.FITTING)
    order = torch.randperm(len(datamodule.train_data), generator=torch.Generator().manual_seed(0))
    datamodule.train_data.subsample(sorted(order[:images].tolist()), inplace=True)
    model = HADNet(
        **LITE0,
        training_mode=mode,
        init_batches=2,
        hst_steps=2,
        cache_features=cache,
        pre_processor=HADNet.configure_pre_processor((256, 256)),
        visualizer=False,
    )
    timer = StepTimer()
    engine = Engine(
        max_epochs=1 + epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[timer],
        default_root_dir="/tmp/hadnet_cache_timing",
    )
    engine.fit(model, datamodule=datamodule)
    timed = [seconds for epoch, seconds in timer.steps if epoch >= 1]
    feature_cache = model.feature_cache
    return {
        "mode": mode,
        "cache": cache,
        "steps": len(timed),
        "mean_s": statistics.mean(timed),
        "median_s": statistics.median(timed),
        "hit_rate": None if feature_cache is None else round(feature_cache.hit_rate, 3),
    }


def parts(repeats: int = 5) -> dict[str, float]:
    """Seconds of the parts that stay live with the cache: Perlin synthesis and backbone levels of 8 images."""
    model = HADNet(**LITE0, visualizer=False)
    images = torch.rand(8, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    timings: dict[str, list[float]] = {"perlin_8": [], "backbone_8": []}
    for _ in range(repeats):
        start = time.perf_counter()
        model.augmenter(images)
        timings["perlin_8"].append(time.perf_counter() - start)
        start = time.perf_counter()
        model.model.extract(images)
        timings["backbone_8"].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def main() -> None:
    """Both modes, live then cached, one line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first")
    parser.add_argument("--images", type=int, default=48, help="training images (a seeded subset)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    for mode in ("supervised", "unsupervised"):
        for cache in (False, True):
            row = run(mode, cache, args.epochs, args.images)
            print(
                f"{row['mode']:<12} cache={row['cache']!s:<5} steps={row['steps']} mean={row['mean_s']:.3f} s "
                f"median={row['median_s']:.3f} s hit_rate={row['hit_rate']}",
                flush=True,
            )
    print("live parts, median s per batch of 8:", {name: round(value, 3) for name, value in parts().items()})


if __name__ == "__main__":
    main()
