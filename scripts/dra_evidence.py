"""DRA evidence on real data: ELPV general protocol (K = 1, 10) and Magnetic Tile hard protocol (K = 10).

Every run: ``FewShotAnomalies`` over the package's ``ELPV``/``MagneticTile`` datamodule, DRA trained
with the given (reduced, CPU) budget, image AUROC on the test set (validation = test, as in the
paper's tables; thresholds do not affect AUROC). The unsupervised baseline, anomalib's PatchCore,
uses the same backbone, image size and test sets (its training split keeps the normal images only).

Example (the budget of docs/models/dra.md)::

    HF_HOME=/work/cache/hf HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=src \\
    python scripts/dra_evidence.py elpv --shots 1 10 --seeds 0 1 2 --epochs 10 --iterations 10 \\
        --batch-size 16 --image-size 160 --out results/dra_evidence/elpv.jsonl

Results are appended as JSON lines (one per run) and summarised at the end;
``python scripts/dra_evidence.py summarize FILE.jsonl...`` prints the Markdown table of several files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

LITE0_FILE = "/work/cache/tf_efficientnet_lite0.safetensors"


def _datamodule(dataset: str, root: str, batch_size: int) -> object:
    from anomalib_hyperbolic.data import ELPV, MagneticTile

    common = {"train_batch_size": batch_size, "eval_batch_size": 32, "num_workers": 0}
    if dataset == "elpv":
        return ELPV(root=root, val_split_mode="same_as_test", **common)
    return MagneticTile(root=root, val_split_mode="same_as_test", **common)


def _few_shot(dataset: str, root: str, args: argparse.Namespace, shots: int, seed: int, cls: str | None) -> object:
    from anomalib_hyperbolic.data import FewShotAnomalies

    return FewShotAnomalies(
        _datamodule(dataset, root, args.batch_size),
        num_anomalies=shots,
        protocol="hard" if cls else "general",
        anomaly_class=cls,
        seed=seed,
        train_batches_per_epoch=args.iterations,
    )


def _normal_only(dataset: str, root: str, args: argparse.Namespace, seed: int, cls: str | None) -> object:
    """Same test set as DRA's K=10 run, training split without the labelled anomalies (for PatchCore)."""
    from anomalib_hyperbolic.data import FewShotAnomalies

    class NormalOnlyTrain(FewShotAnomalies):
        def _setup(self, _stage: str | None = None) -> None:
            super()._setup(_stage)
            samples = self.train_data.samples
            normal = samples[samples["label_index"].astype(int) == 0].reset_index(drop=True)
            normal.attrs = dict(samples.attrs)
            self.train_data.samples = normal

        def train_dataloader(self) -> object:
            return super(FewShotAnomalies, self).train_dataloader()

    return NormalOnlyTrain(
        _datamodule(dataset, root, args.batch_size),
        num_anomalies=10,
        protocol="hard" if cls else "general",
        anomaly_class=cls,
        seed=seed,
    )


def _engine(max_epochs: int, workdir: str) -> object:
    from anomalib.engine import Engine

    return Engine(
        max_epochs=max_epochs,
        limit_val_batches=0,  # no validation: raw scores (no thresholds/normalisation) suffice for AUROC
        accelerator="cpu",
        devices=1,
        default_root_dir=workdir,
        logger=False,
        enable_progress_bar=False,
    )


def _raw_scores() -> object:
    from anomalib.post_processing import PostProcessor

    return PostProcessor(enable_normalization=False, enable_thresholding=False)


def _evaluator() -> object:
    from anomalib.metrics import AUROC, Evaluator

    return Evaluator(test_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_")])


def _image_auroc(engine: object, model: object, datamodule: object) -> float:
    """Image AUROC of the raw scores on the test split, rescaled to [0, 1] first.

    torchmetrics' AUROC passes scores outside [0, 1] through a sigmoid, which saturates to 1.0 in
    float32 above ~17: raw PatchCore distances (40-60 on ELPV) all became 1.0 and gave AUROC 0.500.
    A min-max rescale keeps the ranking and avoids the saturation.
    """
    from torchmetrics.functional.classification import binary_auroc

    batches = engine.predict(model=model, dataloaders=datamodule.test_dataloader())
    scores = torch.cat([batch.pred_score.flatten().double() for batch in batches])
    labels = torch.cat([batch.gt_label.flatten().long() for batch in batches])
    scaled = (scores - scores.min()) / (scores.max() - scores.min()).clamp_min(1e-12)
    return float(binary_auroc(scaled, labels))


def run_dra(dataset: str, root: str, args: argparse.Namespace, shots: int, seed: int, cls: str | None) -> dict:
    from lightning.pytorch import seed_everything

    from anomalib_hyperbolic.models import DRA

    seed_everything(seed, workers=True)
    datamodule = _few_shot(dataset, root, args, shots, seed, cls)
    model = DRA(
        backbone=args.backbone,
        layer=args.layer,
        pre_processor=DRA.configure_pre_processor((args.image_size, args.image_size)),
        post_processor=_raw_scores(),
        evaluator=_evaluator(),
        visualizer=False,
    )
    with tempfile.TemporaryDirectory() as workdir:
        engine = _engine(args.epochs, workdir)
        start = time.time()
        engine.fit(model=model, datamodule=datamodule)
        auroc = _image_auroc(engine, model, datamodule)
    test = datamodule.test_data.samples
    return {
        "model": "DRA",
        "auroc": auroc,
        "seconds": round(time.time() - start, 1),
        "test_normal": int((test.label_index == 0).sum()),
        "test_anomalous": int((test.label_index == 1).sum()),
        "sampled": datamodule.sampled_anomalies,
    }


_PATCHCORE_MODELS: dict[str | None, tuple[object, float]] = {}


def run_patchcore(dataset: str, root: str, args: argparse.Namespace, seed: int, cls: str | None) -> dict:
    """PatchCore on DRA's test set of this seed; trained once per class (its training normals do not vary)."""
    from anomalib.models import Patchcore
    from lightning.pytorch import seed_everything

    datamodule = _normal_only(dataset, root, args, seed, cls)
    workdir = tempfile.mkdtemp(prefix="patchcore_")
    engine = _engine(1, workdir)
    if cls not in _PATCHCORE_MODELS:
        seed_everything(0, workers=True)
        model = Patchcore(
            backbone="tf_efficientnet_lite0",
            layers=args.patchcore_layers,
            pre_trained=True,
            coreset_sampling_ratio=args.coreset_ratio,
            pre_processor=Patchcore.configure_pre_processor((args.image_size, args.image_size)),
            post_processor=_raw_scores(),
            evaluator=_evaluator(),
            visualizer=False,
        )
        start = time.time()
        engine.fit(model=model, datamodule=datamodule)
        _PATCHCORE_MODELS[cls] = (model, time.time() - start)
    model, fit_seconds = _PATCHCORE_MODELS[cls]
    start = time.time()
    datamodule.setup("test")  # not set up by a fit when the model comes from the cache
    auroc = _image_auroc(engine, model, datamodule)
    test = datamodule.test_data.samples
    return {
        "model": "PatchCore",
        "auroc": auroc,
        "seconds": round(fit_seconds + time.time() - start, 1),
        "test_normal": int((test.label_index == 0).sum()),
        "test_anomalous": int((test.label_index == 1).sum()),
    }


def summarize(paths: list[str]) -> None:
    """Markdown table (mean ± std of AUROC over seeds) of the JSON lines in ``paths``."""
    records = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record["dataset"], record["protocol"], record["class"] or "all", record["model"], record["K"])
        groups.setdefault(key, []).append(record)
    print("| dataset | protocol | class | model | K | seeds | AUROC mean ± std | test normal/anomalous | s/run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (dataset, protocol, cls, model, shots), runs in sorted(groups.items(), key=str):
        values = [run["auroc"] for run in runs]
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        seeds = ",".join(str(run["seed"]) for run in runs)
        sizes = {(run["test_normal"], run["test_anomalous"]) for run in runs}
        size = "; ".join(f"{n}/{a}" for n, a in sorted(sizes))
        seconds = statistics.mean(run["seconds"] for run in runs)
        print(
            f"| {dataset} | {protocol} | {cls} | {model} | {shots} | {seeds} | "
            f"{statistics.mean(values):.3f} ± {std:.3f} | {size} | {seconds:.0f} |"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":
        summarize(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["elpv", "magnetic_tile"])
    parser.add_argument("--root", default=None, help="dataset folder (default: ./datasets/elpv or the shared MT)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 10], help="K (general protocol)")
    parser.add_argument("--classes", nargs="*", default=None, help="hard protocol classes (magnetic_tile)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--backbone", default=LITE0_FILE)
    parser.add_argument("--layer", default=None)
    parser.add_argument("--no-patchcore", action="store_true")
    parser.add_argument("--coreset-ratio", type=float, default=0.01, help="PatchCore coreset sampling ratio")
    parser.add_argument("--patchcore-layers", nargs="+", default=["blocks.2", "blocks.4"])
    parser.add_argument("--patchcore-only", action="store_true", help="skip the DRA runs")
    parser.add_argument("--out", default="results/dra_evidence/runs.jsonl")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    root = args.root or ("./datasets/elpv" if args.dataset == "elpv" else "/work/shared/datasets/magnetic_tile")
    if args.dataset == "elpv":
        _datamodule("elpv", root, args.batch_size).prepare_data()
        plan = [(k, None) for k in args.shots]
    else:
        classes = args.classes or ["blowhole", "break", "crack", "fray", "uneven"]
        plan = [(10, cls) for cls in classes]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    budget = {
        "epochs": args.epochs,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "backbone": Path(args.backbone).name,
    }
    records = []
    for seed in args.seeds:
        for shots, cls in plan if not args.patchcore_only else []:
            record = {"dataset": args.dataset, "protocol": "hard" if cls else "general", "class": cls, "K": shots}
            record |= {"seed": seed, **budget, **run_dra(args.dataset, root, args, shots, seed, cls)}
            records.append(record)
            with out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(json.dumps({k: v for k, v in record.items() if k != "sampled"}), flush=True)
        if not args.no_patchcore:
            for cls in sorted({cls for _, cls in plan}, key=str):
                record = {"dataset": args.dataset, "protocol": "hard" if cls else "general", "class": cls, "K": 0}
                record |= {"seed": seed, **budget, **run_patchcore(args.dataset, root, args, seed, cls)}
                records.append(record)
                with out.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)

    groups: dict[tuple, list[float]] = {}
    for record in records:
        groups.setdefault((record["model"], record["class"], record["K"]), []).append(record["auroc"])
    print("\nmodel | class | K | runs | AUROC mean ± std")
    for (model, cls, shots), values in sorted(groups.items(), key=str):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{model} | {cls or 'all'} | {shots} | {len(values)} | {statistics.mean(values):.3f} ± {std:.3f}")


if __name__ == "__main__":
    main()
