"""HADNet evidence on Magnetic Tile (CPU budget): rho sweep + PatchCore, supervised masks, ablations.

Splits (fixed, seed 0):
* unsupervised: MT_Free images sorted by name, shuffled with ``random.Random(0)``, first 80 % train,
  last 20 % test; every defect image (all five types) in test. Validation = test (same for
  every model; only thresholds for ``pred_mask`` come from it).
* supervised: the 392 defect images sorted, shuffled with ``random.Random(0)``, split 8:1:1 into
  train / val / test (the paper's split); masks are used for training.

Usage (each run writes ``<out>/<name>.json``; ``--table`` prints the markdown table)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/hadnet_magnetic_tile.py --runs all
    python scripts/hadnet_magnetic_tile.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import ValSplitMode
from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC, Evaluator

from anomalib_hyperbolic.metrics import MIoU

DATA = Path("/work/shared/datasets/magnetic_tile")
LITE0_FILE = "/work/cache/tf_efficientnet_lite0.safetensors"
DEFECTS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
HADNET_LAYERS = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]  # strides 4, 8, 16, 32 (RealNet-like)
HADNET_R = [24, 40, 56, 40]  # RealNet keeps 1, 1, 1/2, 1/8 of wide_resnet50_2's layers 1-4
HADNET_S = 64
PATCHCORE_LAYERS = ["blocks.2", "blocks.4"]


def _rows(paths: list[Path], split: str, label: int) -> list[dict]:
    rows = []
    for path in paths:
        mask = path.with_suffix(".png")
        rows.append(
            {
                "image_path": str(path),
                "mask_path": str(mask) if label else "",
                "label_index": label,
                "label": "abnormal" if label else "normal",
                "split": split,
                "defect": path.parent.parent.name,
            }
        )
    return rows


def unsupervised_split() -> dict[str, pd.DataFrame]:
    normals = sorted((DATA / "MT_Free" / "Imgs").glob("*.jpg"))
    random.Random(0).shuffle(normals)
    cut = int(0.8 * len(normals))
    defects = [p for d in DEFECTS for p in sorted((DATA / d / "Imgs").glob("*.jpg"))]
    train = pd.DataFrame(_rows(normals[:cut], "train", 0))
    test = pd.DataFrame(_rows(normals[cut:], "test", 0) + _rows(defects, "test", 1))
    return {"train": train, "val": test.copy(), "test": test}


def supervised_split() -> dict[str, pd.DataFrame]:
    defects = [p for d in DEFECTS for p in sorted((DATA / d / "Imgs").glob("*.jpg"))]
    random.Random(0).shuffle(defects)
    n_train, n_val = int(0.8 * len(defects)), int(0.1 * len(defects))
    return {
        "train": pd.DataFrame(_rows(defects[:n_train], "train", 1)),
        "val": pd.DataFrame(_rows(defects[n_train : n_train + n_val], "test", 1)),
        "test": pd.DataFrame(_rows(defects[n_train + n_val :], "test", 1)),
    }


class FrameDataset(AnomalibDataset):
    def __init__(self, samples: pd.DataFrame) -> None:
        super().__init__()
        samples = samples.reset_index(drop=True)
        samples.attrs["task"] = "segmentation"
        self.samples = samples


class FrameDataModule(AnomalibDataModule):
    """Datamodule over fixed sample frames (no resplitting)."""

    def __init__(self, frames: dict[str, pd.DataFrame], batch_size: int, workers: int = 0) -> None:
        super().__init__(
            train_batch_size=batch_size,
            eval_batch_size=batch_size,
            num_workers=workers,
            val_split_mode=ValSplitMode.FROM_DIR,
        )
        self.frames = frames

    @property
    def category(self) -> str:
        return "magnetic_tile"

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = FrameDataset(self.frames["train"])
        self.val_data = FrameDataset(self.frames["val"])
        self.test_data = FrameDataset(self.frames["test"])

    def _create_test_split(self) -> None:
        return


def evaluator() -> Evaluator:
    return Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            MIoU(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            MIoU(fields=["pred_mask", "gt_mask"], prefix="defect_", include_background=False, strict=False),
        ]
    )


def hadnet(args: argparse.Namespace, **overrides: object) -> object:
    from anomalib_hyperbolic.models import HADNet

    size = (args.image_size, args.image_size)
    kwargs = {
        "backbone": LITE0_FILE,
        "layers": HADNET_LAYERS,
        "num_selected": HADNET_R,
        "num_residuals": HADNET_S,
        "discriminator_widths": [64, 16, 8],
        "score_pool_size": max(1, args.image_size // 16),
        "init_batches": args.init_batches,
        "hst_steps": args.hst_steps,
        "lr_step_size": max(1, int(args.epochs * 2 / 3)),
        "pre_processor": HADNet.configure_pre_processor(size),
        "evaluator": evaluator(),
    }
    kwargs.update(overrides)
    return HADNet(**kwargs)


def patchcore(args: argparse.Namespace) -> object:
    from anomalib.models import Patchcore

    size = (args.image_size, args.image_size)
    return Patchcore(
        backbone="tf_efficientnet_lite0",
        layers=PATCHCORE_LAYERS,
        coreset_sampling_ratio=args.coreset_ratio,
        pre_processor=Patchcore.configure_pre_processor(size, size),
        evaluator=evaluator(),
    )


RUNS = {
    "hadnet_rho0": ("unsupervised", lambda a: hadnet(a, rho=0.0)),
    "hadnet_rho0.01": ("unsupervised", lambda a: hadnet(a, rho=0.01)),
    "hadnet_rho0.1": ("unsupervised", lambda a: hadnet(a, rho=0.1)),
    "patchcore": ("unsupervised", patchcore),
    "hadnet_random_selection": ("unsupervised", lambda a: hadnet(a, rho=0.01, selection="random")),
    "hadnet_all_residuals": ("unsupervised", lambda a: hadnet(a, rho=0.01, residual_selection="all")),
    "hadnet_supervised": ("supervised", lambda a: hadnet(a, rho=0.01, training_mode="supervised")),
}


def run(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    random.seed(0)
    mode, factory = RUNS[name]
    frames = unsupervised_split() if mode == "unsupervised" else supervised_split()
    if args.limit:  # smoke tests only
        frames = {k: v.sample(n=min(args.limit, len(v)), random_state=0) for k, v in frames.items()}
    datamodule = FrameDataModule(frames, batch_size=args.batch_size)
    model = factory(args)
    epochs = 1 if name == "patchcore" else args.epochs
    engine = Engine(
        max_epochs=epochs,
        check_val_every_n_epoch=epochs,  # validate (thresholds) once, after the last epoch
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(Path(args.out) / "work" / name),
    )
    start = time.time()
    engine.fit(model, datamodule=datamodule)
    fit_s = time.time() - start
    metrics = engine.test(model, datamodule=datamodule, verbose=False)[0]
    result = {
        "name": name,
        "mode": mode,
        "split_sizes": {k: len(v) for k, v in frames.items()},
        "metrics": {k: float(v) for k, v in metrics.items()},
        "fit_seconds": round(fit_s, 1),
        "total_seconds": round(time.time() - start, 1),
        "epochs": epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)
    return result


def table(out: Path) -> str:
    lines = [
        "| run | mode | I-AUROC | P-AUROC | AUPRO | mIoU (bg+defect) | defect IoU | fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in RUNS:
        path = out / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | not run | | | | | | |")
            continue
        r = json.loads(path.read_text())
        m = r["metrics"]

        def f(key: str, m: dict = m) -> str:
            return f"{m[key]:.3f}" if key in m else "-"

        lines.append(
            f"| {name} | {r['mode']} | {f('image_AUROC')} | {f('pixel_AUROC')} | {f('pixel_AUPRO')} | "
            f"{f('pixel_MIoU')} | {f('defect_MIoU')} | {r['fit_seconds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="all", help="comma-separated names or 'all': " + ", ".join(RUNS))
    parser.add_argument("--out", default="results/hadnet_magnetic_tile")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--init-batches", type=int, default=8)
    parser.add_argument("--hst-steps", type=int, default=20)
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--limit", type=int, default=0, help="rows per split (smoke tests only)")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.table:
        print(table(Path(args.out)))
        return
    names = list(RUNS) if args.runs == "all" else args.runs.split(",")
    for name in names:
        if name not in RUNS:
            sys.exit(f"unknown run {name!r}; choose from {list(RUNS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in names:
        run(name, args)


if __name__ == "__main__":
    main()
