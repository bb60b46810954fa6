"""HypAD curvature study on Magnetic Tile (issue #3): split, teacher distillation, runs, latency.

Steps (each a subcommand, all CPU):

``split``    MT_Free normals split 80/20 with a fixed seed (0): 80 % -> ``train/good``, 20 % ->
             ``test/good``; every defective image of the five MT_<Defect> folders -> ``test/<defect>``
             with its mask in ``ground_truth``. Written in MVTec layout (copies, ``.png`` names) so
             anomalib's ``MVTecAD`` datamodule reads it (the package's MagneticTile datamodule was not
             on main when this was written).
``distill``  PDN-S teacher distilled from ``tf_efficientnet_lite0`` (local ImageNet weights) on the
             training normals only, with :func:`anomalib_hyperbolic.models.hypad.distill.distill_teacher`.
``run``      Trains and tests one configuration (HypAD with a curvature / clipping / projection, or
             anomalib's EfficientAd given the same teacher) with identical steps, seed, data and
             metrics: I-AUROC, P-AUROC, AUPRO (anomalib's, fpr 0.3). Appends a JSON line to ``--results``.
``table``    Markdown table of the JSON lines.
``latency``  ms/image (batch 1, 256 px) of HypAD and EfficientAd in PyTorch and OpenVINO, one process.

The validation split (for EfficientAD's map quantiles) is 5 % of the training normals
(``val_split_mode=from_train``), so the test set keeps every defect and every held-out normal.
No ImageNet here: both models get the same penalty folder (``--penalty-dir``; 200 ELPV solar-cell
images, seeded choice, from the ``elpv-dataset`` package), i.e. out-of-distribution images as in EfficientAD.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

VAL_RATIO = 0.02  # of the training normals, for the map quantiles (15 images)
DEFECTS = ("Blowhole", "Break", "Crack", "Fray", "Uneven")


def build_split(source: Path, target: Path, seed: int = 0, train_fraction: float = 0.8) -> Path:
    """Write the MVTec-layout split under ``target/magnetic_tile``; returns ``target``."""
    category = target / "magnetic_tile"
    if (category / "split.json").is_file():
        return target
    normals = sorted((source / "MT_Free" / "Imgs").glob("*.jpg"))
    rng = random.Random(seed)
    order = normals[:]
    rng.shuffle(order)
    n_train = round(train_fraction * len(order))
    splits = {"train/good": order[:n_train], "test/good": order[n_train:]}
    for name, files in splits.items():
        (category / name).mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copyfile(file, category / name / f"{file.stem}.png")
    counts = {name: len(files) for name, files in splits.items()}
    for defect in DEFECTS:
        images = sorted((source / f"MT_{defect}" / "Imgs").glob("*.jpg"))
        (category / "test" / defect).mkdir(parents=True, exist_ok=True)
        (category / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copyfile(image, category / "test" / defect / f"{image.stem}.png")
            shutil.copyfile(image.with_suffix(".png"), category / "ground_truth" / defect / f"{image.stem}_mask.png")
        counts[f"test/{defect}"] = len(images)
    (category / "split.json").write_text(json.dumps({"seed": seed, "counts": counts}, indent=1))
    return target


def subsample_test(full: Path, target: Path, normals: int, per_defect: int, seed: int = 0) -> Path:
    """Same training split, test set reduced to a seeded random subset (CPU budget); returns ``target``."""
    source, category = full / "magnetic_tile", target / "magnetic_tile"
    if (category / "split.json").is_file():
        return target
    rng = random.Random(seed)
    shutil.copytree(source / "train", category / "train")
    counts = {"train/good": len(list((category / "train" / "good").iterdir()))}
    for name, k in [("good", normals), *[(d, per_defect) for d in DEFECTS]]:
        files = sorted((source / "test" / name).glob("*.png"))
        chosen = sorted(rng.sample(files, min(k, len(files))))
        (category / "test" / name).mkdir(parents=True, exist_ok=True)
        for file in chosen:
            shutil.copyfile(file, category / "test" / name / file.name)
            if name != "good":
                mask = source / "ground_truth" / name / f"{file.stem}_mask.png"
                (category / "ground_truth" / name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(mask, category / "ground_truth" / name / mask.name)
        counts[f"test/{name}"] = len(chosen)
    (category / "split.json").write_text(json.dumps({"seed": seed, "subset_of": str(full), "counts": counts}, indent=1))
    return target


def _datamodule(root: Path, seed: int):  # noqa: ANN202
    from anomalib.data import MVTecAD

    return MVTecAD(
        root=root,
        category="magnetic_tile",
        train_batch_size=1,
        eval_batch_size=8,
        num_workers=0,
        val_split_mode="from_train",
        val_split_ratio=VAL_RATIO,
        seed=seed,
    )


def _evaluator():  # noqa: ANN202
    from anomalib.metrics import AUPRO, AUROC, Evaluator

    return Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", fpr_limit=0.3),
        ],
    )


def _efficientad_with_teacher(teacher: Path, image_size: int, penalty_dir: Path | None = None):  # noqa: ANN202
    """Anomalib's EfficientAd with a local teacher and the same penalty folder as HypAD."""
    import torch
    from anomalib.models import EfficientAd

    class LocalTeacherEfficientAd(EfficientAd):
        def prepare_pretrained_model(self) -> None:
            self.model.teacher.load_state_dict(torch.load(teacher, map_location="cpu", weights_only=True))

    pre = EfficientAd.configure_pre_processor(image_size=(image_size, image_size))
    return LocalTeacherEfficientAd(
        imagenet_dir=penalty_dir or "./datasets/imagenette", pre_processor=pre, evaluator=_evaluator(), visualizer=False
    )


def run(args: argparse.Namespace) -> dict:
    """Train + test one configuration; returns (and appends) its metrics."""
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_hyperbolic.models import HypAD

    torch.set_num_threads(args.threads)
    seed_everything(args.seed, workers=True)
    if args.model == "EfficientAd":
        model = _efficientad_with_teacher(Path(args.teacher), args.image_size, Path(args.penalty_dir))
        name = "EfficientAd (anomalib)"
    else:
        clip = math.inf if args.clip_radius in {"inf", "none"} else float(args.clip_radius)
        model = HypAD(
            c=args.c,
            clip_radius=clip,
            projection=args.projection,
            teacher_weights=args.teacher,
            imagenet_dir=args.penalty_dir,
            augmentation_prob=args.augmentation_prob,
            pre_processor=HypAD.configure_pre_processor(image_size=(args.image_size, args.image_size)),
            evaluator=_evaluator(),
            visualizer=False,
        )
        name = f"HypAD c={args.c} r={args.clip_radius} proj={args.projection} p_aug={args.augmentation_prob}"
    if args.stats:
        # Teacher channel mean/std on the training normals, computed once for every run (same teacher,
        # same data, same code as anomalib's EfficientAd.teacher_channel_mean_std): saves minutes per run.
        stats = torch.load(args.stats, weights_only=True)
        model.model.mean_std.update(stats)
    engine = Engine(
        max_steps=args.steps,
        max_epochs=-1,
        accelerator="cpu",
        devices=1,
        default_root_dir=Path(args.work) / "runs",
        logger=False,
        enable_progress_bar=False,
        check_val_every_n_epoch=None,
        val_check_interval=args.steps,
        num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    datamodule = _datamodule(Path(args.data), args.seed)
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - started
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    result = {
        "name": name,
        "model": args.model,
        "c": args.c,
        "clip_radius": args.clip_radius,
        "projection": args.projection,
        "steps": args.steps,
        "image_size": args.image_size,
        "seed": args.seed,
        "I-AUROC": float(metrics["image_AUROC"]),
        "P-AUROC": float(metrics["pixel_AUROC"]),
        "AUPRO": float(metrics["pixel_AUPRO"]),
        "fit_s": round(fit_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }
    with Path(args.results).open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    print(json.dumps(result))
    return result


def teacher_stats(args: argparse.Namespace) -> None:
    """Teacher channel mean/std on the training normals (anomalib's EfficientAd code), saved to a file."""
    import torch
    from anomalib.models import EfficientAd

    torch.set_num_threads(args.threads)
    model = _efficientad_with_teacher(Path(args.teacher), args.image_size)
    model.prepare_pretrained_model()
    datamodule = _datamodule(Path(args.data), args.seed)
    datamodule.setup()
    loader = datamodule.train_dataloader()
    # the datamodule yields raw images; resize as the pre-processor would
    from torchvision.transforms.v2.functional import resize

    class _Resized:
        def __iter__(self):  # noqa: ANN204
            for batch in loader:
                batch.image = resize(batch.image, [args.image_size, args.image_size], antialias=True)
                yield batch

    stats = EfficientAd.teacher_channel_mean_std(model, _Resized())
    torch.save(stats, args.output)
    print(args.output)


def table(results: Path) -> str:
    """Markdown table of the JSON lines in ``results``."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    lines = [
        "| configuration | c | clip r | projection | I-AUROC | P-AUROC | AUPRO (0.3) | fit+test s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = "-" if r["model"] == "EfficientAd" else r["c"]
        clip = "-" if r["model"] == "EfficientAd" else r["clip_radius"]
        proj = "-" if r["model"] == "EfficientAd" else r["projection"]
        lines.append(
            f"| {r['name']} | {c} | {clip} | {proj} | {r['I-AUROC']:.3f} | {r['P-AUROC']:.3f} | "
            f"{r['AUPRO']:.3f} | {r['total_s']:.0f} |"
        )
    return "\n".join(lines)


def latency(args: argparse.Namespace) -> None:
    """CPU latency (ms/image, batch 1) in PyTorch and OpenVINO for HypAD and EfficientAd."""
    import openvino as ov
    import torch
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

    from anomalib_hyperbolic.models.hypad.torch_model import HypADModel

    class Outputs(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(x)
            return out.pred_score, out.anomaly_map

    torch.set_num_threads(args.threads)
    size = args.image_size
    x = torch.rand(1, 3, size, size)
    models = {"EfficientAd": Outputs(EfficientAdModel()), "HypAD (c=0.01, r=2.3)": Outputs(HypADModel())}
    core = ov.Core()
    out = []
    for name, model in models.items():
        model.eval()
        with torch.no_grad():
            for _ in range(3):
                model(x)
            t = time.perf_counter()
            for _ in range(args.repeats):
                model(x)
            torch_ms = (time.perf_counter() - t) / args.repeats * 1000
        ov_model = ov.convert_model(model, example_input=x)
        compiled = core.compile_model(
            ov_model, "CPU", {"INFERENCE_NUM_THREADS": str(args.threads), "INFERENCE_PRECISION_HINT": "f32"}
        )
        arr = x.numpy()
        for _ in range(3):
            compiled(arr)
        t = time.perf_counter()
        for _ in range(args.repeats):
            compiled(arr)
        ov_ms = (time.perf_counter() - t) / args.repeats * 1000
        out.append((name, torch_ms, ov_ms))
    print(f"| model | PyTorch ms/image | OpenVINO ms/image |  (batch 1, {size} px, {args.threads} thread(s))")
    print("|---|---|---|")
    for name, torch_ms, ov_ms in out:
        print(f"| {name} | {torch_ms:.1f} | {ov_ms:.1f} |")


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split")
    p.add_argument("--source", default="/work/shared/datasets/magnetic_tile")
    p.add_argument("--data", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset-of", default=None, help="full split to subsample the test set of")
    p.add_argument("--test-normals", type=int, default=40)
    p.add_argument("--test-per-defect", type=int, default=12)
    p = sub.add_parser("distill")
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--backbone", default="/work/cache/tf_efficientnet_lite0.safetensors")
    p.add_argument("--layers", nargs="+", default=["blocks.2", "blocks.4"])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("run")
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--model", choices=["HypAD", "EfficientAd"], default="HypAD")
    p.add_argument("--c", type=float, default=0.01)
    p.add_argument("--clip-radius", default="2.3")
    p.add_argument("--projection", default="avgpool")
    p.add_argument("--augmentation-prob", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--penalty-dir", required=True, help="out-of-distribution images for the penalty (both models)")
    p.add_argument("--stats", default=None, help="precomputed teacher mean/std (subcommand stats)")
    p = sub.add_parser("stats")
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("table")
    p.add_argument("--results", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command == "split":
        if args.subset_of:
            target = subsample_test(
                Path(args.subset_of), Path(args.data), args.test_normals, args.test_per_defect, args.seed
            )
            print(target)
        else:
            print(build_split(Path(args.source), Path(args.data), args.seed))
    elif args.command == "distill":
        import torch

        from anomalib_hyperbolic.models.hypad.distill import distill_teacher

        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        distill_teacher(
            image_dir=Path(args.data) / "magnetic_tile" / "train" / "good",
            output=args.output,
            backbone=args.backbone,
            layers=args.layers,
            image_size=args.image_size,
            steps=args.steps,
            batch_size=args.batch_size,
            checkpoint_every=50,
        )
        print(f"distilled in {time.perf_counter() - started:.0f} s")
    elif args.command == "run":
        run(args)
    elif args.command == "stats":
        teacher_stats(args)
    elif args.command == "table":
        print(table(Path(args.results)))
    else:
        latency(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
