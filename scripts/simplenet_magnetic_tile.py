"""SimpleNet (Euclidean and Poincaré) vs anomalib's PatchCore on Magnetic Tile, in one run.

Same split (``MagneticTile`` one-class split: 80 % of MT_Free for training with split seed 0,
the other normals and every defect for test), same backbone (ImageNet EfficientNet-Lite0,
levels ``blocks.2`` + ``blocks.4``), same image size, same machine and thread count.

Reports I-AUROC, P-AUROC, AUPRO, training wall time, and CPU latency (batch 1, 256 x 256,
single thread, PyTorch and OpenVINO FP32) of each model's torch module (no pre/post-processing).

Example (the command behind docs/models/simplenet.md)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HOME=/work/cache/hf HF_HUB_OFFLINE=1 \
    PYTHONPATH=src python scripts/simplenet_magnetic_tile.py \
        --root /work/shared/datasets/magnetic_tile --out results/simplenet_magnetic_tile
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

LITE0_FILE = "/work/cache/tf_efficientnet_lite0.safetensors"
LAYERS = ["blocks.2", "blocks.4"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/work/shared/datasets/magnetic_tile")
    parser.add_argument("--out", default="results/simplenet_magnetic_tile")
    parser.add_argument("--simplenet-backbone", default=LITE0_FILE, help="local weights file (or timm name)")
    parser.add_argument("--patchcore-backbone", default="tf_efficientnet_lite0", help="timm name (HF cache)")
    parser.add_argument("--image-size", type=int, default=128, help="train/test side (budget cut; paper 256)")
    parser.add_argument("--epochs", type=int, default=4, help="SimpleNet epochs (budget cut; paper 160)")
    parser.add_argument("--batch-size", type=int, default=4, help="train batch size (paper 4)")
    parser.add_argument("--embed-dim", type=int, default=384, help="SimpleNet feature dims (paper 1536, for WRN50)")
    parser.add_argument("--hidden", type=int, default=384, help="SimpleNet discriminator width (official 1024)")
    parser.add_argument(
        "--curvature",
        type=float,
        default=1e-4,
        help="Poincaré curvature: lite0 adapted features have mean norm ~86 (training images), "
        "so c = 1e-4 puts them at sqrt(c)|q| ~ 0.9 (c = 0.01 would push every feature to the boundary)",
    )
    parser.add_argument("--coreset-ratio", type=float, default=0.01, help="PatchCore coreset ratio (default 0.1)")
    parser.add_argument("--latency-size", type=int, default=256)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--skip-extra-latency", action="store_true")
    return parser.parse_args()


def evaluator():  # noqa: ANN201
    from anomalib.metrics import AUPRO, AUROC, Evaluator

    return Evaluator(
        val_metrics=[],
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
        ],
    )


def pre_processor(size: int):  # noqa: ANN201
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    return PreProcessor(
        transform=Compose(
            [
                Resize((size, size), antialias=True),
                Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )
    )


class _Outputs(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.inner(x)
        return out.pred_score, out.anomaly_map


def latency(module: torch.nn.Module, size: int, runs: int, threads: int) -> dict[str, float]:
    """Median seconds per image (batch 1) in PyTorch and OpenVINO FP32, ``threads`` CPU threads."""
    import openvino as ov

    module = module.eval()
    image = torch.rand(1, 3, size, size)
    wrapped = _Outputs(module).eval()
    timings = []
    with torch.inference_mode():
        for _ in range(3):
            wrapped(image)
        for _ in range(runs):
            start = time.perf_counter()
            wrapped(image)
            timings.append(time.perf_counter() - start)
    with torch.no_grad():
        converted = ov.convert_model(wrapped, example_input=image)
    compiled = ov.Core().compile_model(
        converted,
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()
    array = image.numpy()
    for _ in range(3):
        request.infer({0: array})
    ov_timings = []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer({0: array})
        ov_timings.append(time.perf_counter() - start)
    with torch.no_grad():
        reference = wrapped(image)[0].numpy()
    ov_score = request.infer({0: array})[0]
    return {
        "torch_ms": 1000 * statistics.median(timings),
        "openvino_ms": 1000 * statistics.median(ov_timings),
        "openvino_score_abs_diff": float(abs(ov_score - reference).max()),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from lightning.pytorch import seed_everything

    from anomalib_hyperbolic.data import MagneticTile
    from anomalib_hyperbolic.models import SimpleNet

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_started = time.perf_counter()

    def datamodule() -> MagneticTile:
        return MagneticTile(
            root=args.root,
            train_batch_size=args.batch_size,
            eval_batch_size=16,
            num_workers=args.num_workers,
            split_seed=0,
            seed=args.seed,
        )

    simplenet_common = {
        "backbone": args.simplenet_backbone,
        "layers": LAYERS,
        "pre_trained": True,
        "pretrain_embed_dim": args.embed_dim,
        "target_embed_dim": args.embed_dim,
        "discriminator_hidden": args.hidden,
    }
    specs = {
        "PatchCore": (
            lambda: Patchcore(
                backbone=args.patchcore_backbone,
                layers=LAYERS,
                pre_trained=True,
                coreset_sampling_ratio=args.coreset_ratio,
            ),
            1,
        ),
        "SimpleNet (euclidean, paper sigma)": (
            lambda: SimpleNet(**simplenet_common, distance="euclidean"),
            args.epochs,
        ),
        "SimpleNet (euclidean, relative sigma)": (
            lambda: SimpleNet(**simplenet_common, distance="euclidean", relative_noise=True),
            args.epochs,
        ),
        "SimpleNet (poincare, relative sigma)": (
            lambda: SimpleNet(**simplenet_common, distance="poincare", curvature=args.curvature, relative_noise=True),
            args.epochs,
        ),
    }
    results: dict[str, dict] = {}
    workdir = Path(tempfile.mkdtemp(prefix="simplenet_mt_"))
    for name, (build, epochs) in specs.items():
        seed_everything(args.seed, workers=True)
        model = build()
        model.pre_processor = pre_processor(args.image_size)
        model.evaluator = evaluator()
        engine = Engine(
            max_epochs=epochs,
            default_root_dir=workdir / name.replace(" ", "_"),
            logger=False,
            enable_progress_bar=False,
            check_val_every_n_epoch=epochs,  # one validation pass at the end (post-processor statistics)
            accelerator="cpu",
            devices=1,
        )
        data = datamodule()
        start = time.perf_counter()
        engine.fit(model, datamodule=data)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        metrics = engine.test(model, datamodule=data, verbose=False)[0]
        test_seconds = time.perf_counter() - start
        record = {
            "I-AUROC": float(metrics["image_AUROC"]),
            "P-AUROC": float(metrics["pixel_AUROC"]),
            "AUPRO": float(metrics["pixel_AUPRO"]),
            "train_seconds": train_seconds,
            "test_seconds": test_seconds,
            "epochs": epochs,
        }
        if isinstance(model, SimpleNet):
            with torch.no_grad():
                batch = next(iter(data.train_dataloader()))
                images = model.pre_processor.transform(batch.image)
                norms = model.model.adapted_features(images).norm(dim=-1)
            record["mean_adapted_norm"] = float(norms.mean())
            record["sqrt_c_times_norm"] = float(norms.mean()) * args.curvature**0.5
        else:
            record["memory_bank"] = list(model.model.memory_bank.shape)
        record.update(latency(model.model, args.latency_size, args.latency_runs, args.threads))
        results[name] = record
        print(name, json.dumps(record), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))

    extra: dict[str, dict] = {}
    if not args.skip_extra_latency:
        # Latency only (weights do not change it): SimpleNet at the paper's 1536-d / 1024 hidden,
        # and PatchCore with the memory bank its default 10 % coreset keeps of full 256-px training.
        paper = SimpleNet(
            backbone=args.simplenet_backbone, layers=LAYERS, pre_trained=True, pre_processor=False, evaluator=False
        )
        extra["SimpleNet 1536-d (paper dims), untrained"] = latency(
            paper.model, args.latency_size, args.latency_runs, args.threads
        )
        patchcore = Patchcore(backbone=args.patchcore_backbone, layers=LAYERS, pre_trained=True, evaluator=False)
        n_train = len(data.train_data)
        grid = (args.latency_size // 8) ** 2
        dim = results["PatchCore"]["memory_bank"][1]
        bank = int(0.1 * n_train * grid)
        patchcore.model.memory_bank = torch.randn(bank, dim)
        extra[f"PatchCore, 10 % coreset of {n_train} x {grid} (random {bank} x {dim} bank)"] = latency(
            patchcore.model, args.latency_size, args.latency_runs, args.threads
        )
        for key, value in extra.items():
            print(key, json.dumps(value), flush=True)

    summary = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"python {sys.version.split()[0]}, torch {torch.__version__}",
        "args": vars(args),
        "results": results,
        "extra_latency": extra,
        "total_seconds": time.perf_counter() - run_started,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "| model | I-AUROC | P-AUROC | AUPRO | train s | torch ms | OpenVINO ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['I-AUROC']:.3f} | {r['P-AUROC']:.3f} | {r['AUPRO']:.3f} | {r['train_seconds']:.0f} | "
            f"{r['torch_ms']:.1f} | {r['openvino_ms']:.1f} |"
        )
    for name, r in extra.items():
        lines.append(f"| {name} | - | - | - | - | {r['torch_ms']:.1f} | {r['openvino_ms']:.1f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"total {summary['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
