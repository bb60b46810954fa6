"""Side-by-side benchmark of this package's models and anomalib's (PatchCore, EfficientAd, ...).

``anomalib-hyperbolic benchmark --config configs/benchmark/magnetic_tile.yaml``

Every cell of the grid (one model configuration) trains and tests on the same datamodule, split,
seed and backbone weights, in its own subprocess (clean peak-memory figures, isolation), and writes
``cells/<name>.json``. Finished cells are never recomputed, so an interrupted run resumes where it
stopped. Then the figures are collected into ``results.csv`` / ``results.md`` and plotted
(``metrics.png``, ``latency_vs_aupro.png``, ``hypad_curvature.png``).

Per cell: image AUROC and F1, pixel AUROC, AUPRO (anomalib's, FPR limit 0.3), mIoU (when the
datamodule has masks), training wall time, peak resident memory, and CPU latency at batch 1 and
throughput at batch 8 in PyTorch eager and OpenVINO (same process, warm-up, median of >= 20 runs).

Config (YAML)::

    output: results/benchmark/magnetic_tile
    seed: 0
    image_size: 256
    env: {HF_HOME: .cache/hf, HF_HUB_OFFLINE: "1"}     # offline backbone for anomalib's models
    data: {class_path: anomalib_hyperbolic.data.MagneticTile, init_args: {root: ...}}
    subset: {train: 0.5, test: 0.3, seed: 0}   # optional CPU-budget cut, same images for every cell
    pdn_teacher: teacher_small.pth             # optional local PDN teacher for EfficientAd and HypAD
    latency_image_size: 256                    # optional; defaults to image_size
    latency: {runs: 20, warmup: 5, batch_sizes: [1, 8], openvino_precision: f32}   # or false: no timing
    latency_after: {runs: 20, ...}             # timing settings for --time-only when latency is false
    accelerator: cpu                           # training/testing device (gpu: train there, time later)
    normalization: model                       # or backbone: Normalize with each cell backbone's mean/std
    precision: 32-true                         # Lightning's training precision, e.g. bf16-mixed (bf16 autocast)
    f32_evaluation: true                       # mixed precisions: validation/test/predict steps stay float32
    save_weights: false                        # keep each cell's trained state for `--time-only`
    models:
      - name: SimpleNet
        class_path: anomalib_hyperbolic.models.SimpleNet
        init_args: {backbone: .cache/weights/tf_efficientnet_lite0.safetensors, layers: [blocks.2, blocks.4]}
        max_epochs: 4
        data_wrapper: null          # or {class_path: ..., init_args: {...}} wrapping the datamodule (DRA)
        data_overrides: {}          # per-cell datamodule arguments (e.g. train_batch_size: 1 for EfficientAd)
        max_time: null              # optional Lightning wall-time cap, "DD:HH:MM:SS" (steps reached are recorded)
        save_weights: null          # per-cell override of save_weights
        seed: null                  # per-cell override of the training seed (e.g. one cell per seed)
        normalization: null         # per-cell override: model | backbone | imagenet (see build_model)
        precision: null             # per-cell override of precision (e.g. bf16-mixed)
        f32_evaluation: null        # per-cell override of f32_evaluation
        check_val_every_n_epoch: null   # default: max_epochs (one validation, at the end) without max_steps/max_time

``subset`` draws every image by a hash of the seed and its path relative to the dataset root
(``MT_Free/Imgs/x.jpg``; see :func:`subset_image_names`), so a relative root, an absolute root or a
copy of the data elsewhere keep the same images. ``precision: bf16-mixed`` trains under bf16 autocast
(Lightning's mixed precision, float32 weights); with ``f32_evaluation`` (default) validation, test and
prediction run in float32 (:class:`~anomalib_hyperbolic.precision.TrainOnlyMixedPrecision`), so anomaly
maps, scores and the thresholds set on validation are not rounded to bf16. An epoch-based cell
validates once, after its last epoch (``check_val_every_n_epoch = max_epochs``; see
:func:`validation_interval`); step- or time-limited cells validate every epoch. Each row records
``precision`` (``f32_evaluation`` for mixed ones) and ``check_val_every_n_epoch``.

Training on an accelerator and timing on the edge CPU are separate steps: run the grid with
``accelerator: gpu``, ``latency: false`` and ``save_weights: true`` where the GPU is (``--parallel N``
runs N cells at once), bring ``<output>/cells`` and ``<output>/weights`` to the CPU machine and run
``--time-only``: each saved cell is rebuilt, given its trained state, and timed there.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# pixel_MIoU: the pooled binary IoU (normal and defect pixels); pixel_CategoryIoU: the mean IoU over defect types
METRIC_COLUMNS = ["image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO", "pixel_MIoU", "pixel_CategoryIoU"]
# the same threshold-free metrics on raw model scores, before anomalib's normalise-and-clamp
RAW_METRIC_COLUMNS = ["raw_image_AUROC", "raw_pixel_AUROC", "raw_pixel_AUPRO"]
SUMMARY_COLUMNS = [*METRIC_COLUMNS, *RAW_METRIC_COLUMNS]
LATENCY_COLUMNS = ["torch_latency_ms_b1", "openvino_latency_ms_b1"]
TRAINING_COLUMNS = ["train_seconds", "train_steps_per_second", "train_images_per_second"]
COLUMNS = [
    "name",
    *METRIC_COLUMNS,
    *RAW_METRIC_COLUMNS,
    "train_seconds",
    "train_steps_per_second",
    "peak_memory_mb",
    "torch_latency_ms_b1",
    "torch_throughput_ips_b8",
    "openvino_latency_ms_b1",
    "openvino_throughput_ips_b8",
]


def _import(class_path: str) -> Any:
    module_name, _, attribute = class_path.rpartition(".")
    if not module_name:
        msg = f"class_path must be a dotted path like package.module.Class, got {class_path!r}"
        raise ValueError(msg)
    return getattr(importlib.import_module(module_name), attribute)


def load_config(path: str | Path, smoke: bool = False) -> dict[str, Any]:
    """Read and check a benchmark config; expand ``seeds`` into one cell per seed.

    With ``smoke``, the config's ``smoke`` section is applied first (see :func:`apply_smoke`).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        msg = f"Benchmark config {str(path)!r} not found"
        raise FileNotFoundError(msg)
    config = yaml.safe_load(path.read_text())
    for key in ("output", "data", "models"):
        if key not in config:
            msg = f"Benchmark config {str(path)!r} lacks the key {key!r}"
            raise ValueError(msg)
    if smoke:
        config = apply_smoke(config, path)
    config["models"] = expand_seeds(config)
    names = [model["name"] for model in config["models"]]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        msg = f"Benchmark model names must be unique; repeated: {duplicates}"
        raise ValueError(msg)
    return config


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: nested mappings merge, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_smoke(config: dict[str, Any], path: str | Path = "config") -> dict[str, Any]:
    """The config at its ``--smoke`` size: a tiny run of the same grid, e.g. on generated data in CI.

    ``smoke`` is merged over the config (nested mappings merge); inside it, ``models`` is merged over
    every model and a model's own ``smoke`` mapping over that model. Lists are replaced, so a smoke
    ``prepare`` list (see :func:`prepare_files`) can generate the images the tiny run uses.
    """
    smoke = dict(config.get("smoke") or {})
    if not smoke:
        msg = f"Benchmark config {str(path)!r} has no `smoke` section, so it has no --smoke size"
        raise ValueError(msg)
    every_model = smoke.pop("models", {}) or {}
    merged = _deep_merge({key: value for key, value in config.items() if key != "smoke"}, smoke)
    merged["models"] = [
        _deep_merge(_deep_merge(spec, every_model), spec.get("smoke") or {}) for spec in config["models"]
    ]
    return merged


def expand_seeds(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One cell per training seed for every model that lists ``seeds`` (or inherits the config's).

    A model with ``seeds: [0, 1, 2]`` becomes cells ``"<name> s0"``, ``"<name> s1"``, ``"<name> s2"``
    with ``seed`` set and ``group: <name>``, the key by which :func:`seed_summary` aggregates them. A
    model with its own ``seed`` (and no ``seeds``) stays one cell, as does every model when neither
    the model nor the config lists seeds. Cells come seed-major: every model's first seed, then every
    model's second, so that an interrupted grid has whole rounds of the models.
    """
    default = config.get("seeds")
    rounds: list[list[dict[str, Any]]] = []
    for spec in config["models"]:
        spec = {key: value for key, value in spec.items() if key != "smoke"}
        seeds = spec.pop("seeds", None if "seed" in spec else default)
        if seeds is None:
            expanded = [spec]
        elif not isinstance(seeds, list) or not seeds or not all(isinstance(seed, int) for seed in seeds):
            msg = f"benchmark model {spec['name']!r}: seeds must be a non-empty list of integers, got {seeds!r}"
            raise ValueError(msg)
        else:
            expanded = [
                {**spec, "name": f"{spec['name']} s{seed}", "seed": seed, "group": spec["name"]} for seed in seeds
            ]
        for index, cell in enumerate(expanded):
            if index == len(rounds):
                rounds.append([])
            rounds[index].append(cell)
    return [cell for cells in rounds for cell in cells]


# ---------------------------------------------------------------------------------------------
# one cell (runs in a subprocess)
# ---------------------------------------------------------------------------------------------


def _evaluator(with_masks: bool) -> Any:
    from anomalib.metrics import Evaluator, F1Score

    from anomalib_hyperbolic.metrics import threshold_free_metrics

    metrics = [
        *threshold_free_metrics(pixel_metrics=with_masks),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
    ]
    if with_masks:
        from anomalib_hyperbolic.metrics import CategoryIoU, MIoU

        metrics += [
            MIoU(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            CategoryIoU(prefix="pixel_", strict=False),
        ]
    return Evaluator(test_metrics=metrics)


def _median_seconds(function: Any, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        function()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _latency(model: Any, export_dir: Path, image_size: int, settings: dict[str, Any]) -> dict[str, float]:
    import numpy as np
    import torch

    runs = max(int(settings.get("runs", 20)), 20)
    warmup = int(settings.get("warmup", 5))
    batch_sizes = settings.get("batch_sizes", [1, 8])
    precision = settings.get("openvino_precision", "f32")
    figures: dict[str, float] = {}
    model.eval()
    xml = model.to_openvino(export_root=export_dir, input_size=(image_size, image_size))
    for batch in batch_sizes:
        inputs = torch.rand(batch, 3, image_size, image_size)
        with torch.no_grad():
            seconds = _median_seconds(lambda inputs=inputs: model(inputs), runs, warmup)
        _store(figures, "torch", batch, seconds)
        request, graph_batch, note = _openvino_request(xml, batch, image_size, precision)
        calls = math.ceil(batch / graph_batch)
        if note:
            figures[f"openvino_b{batch}_note"] = note
        array = np.random.default_rng(0).random((graph_batch, 3, image_size, image_size), dtype=np.float32)

        def infer(request: Any = request, array: np.ndarray = array, calls: int = calls) -> None:
            for _ in range(calls):
                request.infer([array])

        _store(figures, "openvino", batch, _median_seconds(infer, runs, warmup))
    return figures


def _openvino_request(xml: Any, batch: int, image_size: int, precision: str | None) -> tuple[Any, int, str]:
    """An infer request for ``batch`` images, or for the graph's own fixed batch when it cannot be reshaped.

    ``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT`` (``"f32"``...); ``None`` or ``"default"``
    leaves the device's default (bf16 on CPUs with bf16 units). Some exports carry a fixed batch
    inside the graph (anomalib's Patchcore with EfficientNet-Lite0 at 256 px comes out of torch's
    exporter with a static batch of 2): then the timing uses calls of the graph's own batch, and the
    returned note says so.
    """
    import openvino as ov

    config = {} if precision in (None, "default") else {"INFERENCE_PRECISION_HINT": precision}
    ov_model = ov.Core().read_model(xml)
    try:
        ov_model.reshape({ov_model.input(0).any_name: [batch, 3, image_size, image_size]})
        return ov.Core().compile_model(ov_model, "CPU", config).create_infer_request(), batch, ""
    except RuntimeError as error:
        ov_model = ov.Core().read_model(xml)
        graph_batch = int(ov_model.input(0).get_partial_shape()[0].get_length())
        logger.warning(
            "OpenVINO graph does not reshape to batch %d (%s); timing batch-%d calls", batch, error, graph_batch
        )
        calls = math.ceil(batch / graph_batch)
        note = f"graph has a fixed batch of {graph_batch}: timed as {calls} batch-{graph_batch} call(s)"
        return ov.Core().compile_model(ov_model, "CPU", config).create_infer_request(), graph_batch, note


def _store(figures: dict[str, float], runtime: str, batch: int, seconds: float) -> None:
    if batch == 1:
        figures[f"{runtime}_latency_ms_b1"] = seconds * 1000
    else:
        figures[f"{runtime}_throughput_ips_b{batch}"] = batch / seconds


def dataset_root(datamodule: Any) -> Path | None:
    """The folder a datamodule reads its images from: its ``root``, else that of the datamodule it wraps.

    ``MVTecAD``, ``Folder`` and this package's datamodules keep it as ``root``; wrappers such as
    :class:`~anomalib_hyperbolic.data.FewShotAnomalies` hold the wrapped one as ``datamodule``.
    ``None`` when neither has one (e.g. a ``Folder`` built from absolute folders without ``root``).
    """
    while datamodule is not None:
        root = getattr(datamodule, "root", None)
        if root is not None:
            return Path(root)
        datamodule = getattr(datamodule, "datamodule", None)
    return None


def _relative_name(path: str | Path, base: Path) -> str | None:
    """``path`` relative to ``base`` in POSIX form (``MT_Free/Imgs/x.jpg``); ``None`` when it lies outside.

    Both are made absolute first (against the working directory), as written and, failing that, with
    symbolic links resolved (:meth:`Path.resolve`).
    """
    for candidate, folder in (
        (Path(os.path.abspath(path)), Path(os.path.abspath(base))),
        (Path(path).resolve(), base.resolve()),
    ):
        if candidate.is_relative_to(folder):
            return candidate.relative_to(folder).as_posix()
    return None


def subset_image_names(datamodule: Any) -> dict[str, str]:
    """The name under which :func:`apply_subset` draws each image of a (set-up) datamodule's splits.

    The name is the image path relative to the dataset's root (:func:`dataset_root`), in POSIX form,
    so a relative root, an absolute root or a copy of the data in another folder keep the same images.
    When the datamodule has no root, or some image lies outside it (a ``Folder`` with an absolute
    ``abnormal_dir`` elsewhere), every image is named relative to the common parent folder of all the
    images of the train, val and test splits instead (a warning says so when there was a root): still
    independent of where the data lies, as long as the folder layout below that parent is kept.
    """
    paths = sorted(
        {
            str(path)
            for split in ("train", "val", "test")
            if getattr(datamodule, f"{split}_data", None) is not None
            for path in getattr(datamodule, f"{split}_data").samples["image_path"]
        }
    )
    root = dataset_root(datamodule)
    if root is not None:
        names = {path: _relative_name(path, root) for path in paths}
        outside = [path for path, name in names.items() if name is None]
        if not outside:
            return names  # type: ignore[return-value]
        logger.warning(
            "%d image(s) lie outside the dataset root %s (e.g. %s): the subset draw names images relative to "
            "their common parent folder instead",
            len(outside),
            root,
            outside[0],
        )
    if not paths:
        return {}
    parent = Path(os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths]))
    return {path: Path(os.path.abspath(path)).relative_to(parent).as_posix() for path in paths}


def _subset_indices(
    samples: Any,
    fraction: float,
    seed: int,
    keep_anomalous: bool = False,
    complement: bool = False,
    names: dict[str, str] | None = None,
) -> list[int]:
    """Rows kept by a seeded per-image draw: image ``p`` stays when ``sha256(seed:name(p))`` < ``fraction``.

    ``names`` maps each image path to the name it is drawn under (see :func:`subset_image_names`:
    the path relative to the dataset root); without it, the path as the samples list it. The decision
    for an image depends on its name and the seed only, so every cell keeps the same images even when
    a data wrapper moved a few of them to another split (DRA's labelled anomalies), wherever the data
    lies, and every (label, anomaly type) group keeps about ``fraction`` of its images. With
    ``complement`` the images that the same draw would *not* keep are kept instead: a disjoint set,
    e.g. to confirm a setting chosen on the drawn subset.
    """
    import hashlib

    names = names or {}
    kept = []
    for index, (path, label) in enumerate(zip(samples["image_path"], samples["label_index"], strict=True)):
        name = names.get(str(path), str(path))
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        drawn = int.from_bytes(digest[:8], "big") < fraction * 2**64
        if (keep_anomalous and int(label) == 1) or drawn != complement:
            kept.append(index)
    return kept


def apply_subset(datamodule: Any, subset: dict[str, Any] | None) -> dict[str, int]:
    """Set the datamodule up once and keep a seeded fraction of its splits (a per-image draw).

    ``subset`` maps split names (``train``, ``val``, ``test``) to fractions in (0, 1] plus an
    optional ``seed`` and an optional ``complement`` list of splits for which the images the draw
    leaves out are kept instead (a disjoint set). Every cell gets the same images: the split and the
    choice are seeded (see :func:`_subset_indices`) and key on the image paths relative to the dataset
    root (:func:`subset_image_names`), so the same images are kept wherever the data lies; labelled
    anomalies in the training split (few-shot data) are all kept. Returns the number of images per
    split after the cut.
    """
    from lightning.pytorch.trainer.states import TrainerFn

    datamodule.setup(TrainerFn.FITTING)  # marks the datamodule as set up: the trainer keeps the cut
    subset = dict(subset or {})
    seed = int(subset.pop("seed", 0))
    complement = set(subset.pop("complement", None) or [])
    unknown = sorted((set(subset) | complement) - {"train", "val", "test"})
    if unknown:
        msg = f"benchmark subset keys must be train, val, test, seed or complement; got {unknown}"
        raise ValueError(msg)
    missing = sorted(complement - set(subset))
    if missing:
        msg = f"benchmark subset.complement names splits without a fraction: {missing}"
        raise ValueError(msg)
    names = subset_image_names(datamodule) if subset else {}
    for split, fraction in subset.items():
        fraction = float(fraction)
        if not 0 < fraction <= 1:
            msg = f"benchmark subset.{split} must be a fraction in (0, 1], got {fraction}"
            raise ValueError(msg)
        dataset = getattr(datamodule, f"{split}_data", None)
        if dataset is None:
            msg = f"benchmark subset.{split}: the datamodule has no {split} split"
            raise ValueError(msg)
        indices = _subset_indices(
            dataset.samples,
            fraction,
            seed,
            keep_anomalous=split == "train",
            complement=split in complement,
            names=names,
        )
        if not indices:
            msg = f"benchmark subset.{split}={fraction} keeps no image of the {len(dataset)} in that split"
            raise ValueError(msg)
        dataset.subsample(indices, inplace=True)
    return {
        split: len(getattr(datamodule, f"{split}_data"))
        for split in ("train", "val", "test")
        if getattr(datamodule, f"{split}_data", None) is not None
    }


def use_local_pdn_teacher(model: Any, teacher: str | Path) -> None:
    """Make an EfficientAd-style model (anomalib's EfficientAd, HypAD) load ``teacher`` instead of downloading.

    Both models call ``prepare_pretrained_model`` at the start of training; this replaces it, for this
    instance only, with a ``weights_only`` load of the local file, so both get the same teacher.
    """
    import torch

    path = Path(teacher)
    if not path.is_file():
        msg = f"pdn_teacher {str(path)!r} not found (make one with `anomalib-hyperbolic distill-teacher`)"
        raise FileNotFoundError(msg)
    teacher_module = model.model.teacher

    def prepare_pretrained_model() -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            missing, unexpected = teacher_module.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatch
            msg = f"pdn_teacher {str(path)!r} does not fit the model's PDN: {error}"
            raise ValueError(msg) from error
        if missing or unexpected:
            msg = f"pdn_teacher {str(path)!r} does not fit the model's PDN: missing {missing}, unexpected {unexpected}"
            raise ValueError(msg)

    model.prepare_pretrained_model = prepare_pretrained_model


def cell_image_size(config: dict[str, Any], spec: dict[str, Any]) -> int:
    """The cell's input side: its own ``image_size`` when it has one, else the config's (256)."""
    return int(spec.get("image_size", config.get("image_size", 256)))


#: ``normalization`` values: the model's own pre-processor, the cell backbone's mean/std, ImageNet's.
NORMALIZATIONS = ("model", "backbone", "imagenet")


def cell_normalization(config: dict[str, Any], spec: dict[str, Any]) -> str:
    """The cell's ``normalization``: its own, else the config's, else ``"model"`` (see :func:`build_model`)."""
    mode = spec.get("normalization") or config.get("normalization") or "model"  # null: not set
    if mode not in NORMALIZATIONS:
        msg = f"benchmark model {spec.get('name')!r}: normalization must be one of {list(NORMALIZATIONS)}, got {mode!r}"
        raise ValueError(msg)
    return mode


def normalization_record(config: dict[str, Any], spec: dict[str, Any], model: Any) -> dict[str, Any]:
    """The input mean/std a cell's model uses, for its row.

    ``where`` is ``"pre_processor"`` (a torchvision ``Normalize``), ``"model"`` (HADNet's
    ``image_mean``/``image_std`` buffers) or ``None`` (the model normalises with constants of its own
    inside, as EfficientAd, or not at all).
    """
    from anomalib_hyperbolic.models.components import pre_processor_normalization

    record: dict[str, Any] = {"mode": cell_normalization(config, spec), "where": None, "mean": None, "std": None}
    found = pre_processor_normalization(getattr(model, "pre_processor", None))
    inner = getattr(model, "model", None)
    if found is not None:
        record.update(where="pre_processor", mean=found[0], std=found[1])
    elif hasattr(inner, "image_mean") and hasattr(inner, "image_std"):
        record.update(where="model", mean=inner.image_mean.flatten().tolist(), std=inner.image_std.flatten().tolist())
    return record


def build_model(config: dict[str, Any], spec: dict[str, Any]) -> Any:
    """The cell's model: its class and arguments, the common pre-processor, evaluator, no visualizer.

    The input size is :func:`cell_image_size`. The pre-processor's normalisation follows
    :func:`cell_normalization`:

    * ``model`` (default): the model class's own ``configure_pre_processor``, given the cell's
      ``init_args.backbone`` when it takes a ``backbone`` (this package's models: the backbone's
      statistics, as the model's default pre-processor).
    * ``backbone``: a pre-processor holding a torchvision ``Normalize`` gets the mean/std of the cell's
      ``init_args.backbone`` (:func:`~anomalib_hyperbolic.backbones.backbone_normalization`), anomalib's
      models included (e.g. Padim on ``tf_efficientnet_lite0``: 0.5/0.5).
    * ``imagenet``: such a ``Normalize`` gets ImageNet's mean/std (a control cell).

    Cells without a ``Normalize`` (models that normalise inside: EfficientAd, HypAD, HADNet) and, for
    ``backbone``, cells without a ``backbone`` argument keep the model's pre-processor.
    """
    from anomalib_hyperbolic.backbones import IMAGENET_MEAN, IMAGENET_STD, backbone_normalization
    from anomalib_hyperbolic.models.components import pre_processor_normalization, with_normalization

    image_size = cell_image_size(config, spec)
    model_class = _import(spec["class_path"])
    mode = cell_normalization(config, spec)
    backbone = spec.get("init_args", {}).get("backbone")
    size = (image_size, image_size)
    if backbone is not None and "backbone" in inspect.signature(model_class.configure_pre_processor).parameters:
        pre_processor = model_class.configure_pre_processor(image_size=size, backbone=backbone)
    else:
        pre_processor = model_class.configure_pre_processor(image_size=size)
    if mode != "model" and pre_processor_normalization(pre_processor) is not None:
        if mode == "imagenet":
            pre_processor = with_normalization(pre_processor, IMAGENET_MEAN, IMAGENET_STD)
        elif backbone is not None:
            pre_processor = with_normalization(pre_processor, *backbone_normalization(backbone))
    model = model_class(
        **spec.get("init_args", {}),
        pre_processor=pre_processor,
        evaluator=_evaluator(bool(config.get("pixel_metrics", True))),
        visualizer=False,  # no images: they cost time and are not benchmarked
    )
    if config.get("pdn_teacher") and hasattr(model, "prepare_pretrained_model") and hasattr(model.model, "teacher"):
        use_local_pdn_teacher(model, config["pdn_teacher"])
    return model


def trained_state(model: Any, initial: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``model``'s state that training changed (new shape or new values), on the CPU.

    Frozen pretrained backbones are left out: a rebuilt model loads them again from the same weights.
    """
    import torch

    changed = {}
    for key, value in model.state_dict().items():
        before = initial.get(key)
        value = value.detach().cpu()
        if before is None or before.shape != value.shape or not torch.equal(before, value):
            changed[key] = value.clone()
    return changed


def load_trained_state(model: Any, state: dict[str, Any]) -> None:
    """Put a :func:`trained_state` into a freshly built model of the same cell.

    Buffers that training resized (PatchCore's memory bank starts empty) are resized first; a key
    the model does not have, or a parameter of another shape, is an error naming the key.
    """
    import torch

    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        msg = f"saved benchmark weights do not fit this model: unknown keys {unknown[:5]}"
        raise ValueError(msg)
    for key, value in state.items():
        if own[key].shape == value.shape:
            continue
        module_name, _, name = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if name not in module._buffers:  # only registered buffers are resized
            shapes = f"{tuple(value.shape)} saved, {tuple(own[key].shape)} in the model"
            msg = f"saved benchmark weights do not fit this model: {key} is {shapes}"
            raise ValueError(msg)
        module._buffers[name] = torch.empty_like(value)
    model.load_state_dict(state, strict=False)


def _weights_file(output: Path, name: str) -> Path:
    return output / "weights" / f"{_cell_file(output, name).stem}.pt"


def cell_seed(config: dict[str, Any], spec: dict[str, Any]) -> int:
    """The cell's training seed: its own ``seed`` or the config's (0 by default).

    Only model initialisation and training randomness follow it; the data split and ``subset`` draw
    have their own seeds, so cells that differ in ``seed`` see the same images.
    """
    return int(spec.get("seed", config.get("seed", 0)))


# Lightning's short spellings of its precisions, and the mixed ones (autocast over float32 weights)
_PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}
MIXED_PRECISIONS = ("bf16-mixed", "16-mixed")


def cell_precision(config: dict[str, Any], spec: dict[str, Any]) -> tuple[str, bool]:
    """The cell's Lightning training ``precision`` and its ``f32_evaluation`` flag.

    ``precision`` is the cell's own, else the config's, else ``"32-true"`` (Lightning's default), in
    Lightning's spelling (``"bf16"`` becomes ``"bf16-mixed"``). ``f32_evaluation`` (the cell's, else
    the config's, default ``True``) matters for the mixed precisions only: it keeps validation, test
    and predict steps in float32 (see :func:`precision_arguments`).
    """
    precision = next(
        (value for value in (spec.get("precision"), config.get("precision")) if value is not None), "32-true"
    )
    precision = str(precision)
    f32_evaluation = next(
        (value for value in (spec.get("f32_evaluation"), config.get("f32_evaluation")) if value is not None), True
    )
    return _PRECISION_ALIASES.get(precision, precision), bool(f32_evaluation)


def precision_arguments(precision: str, f32_evaluation: bool, accelerator: str | None) -> dict[str, Any]:
    """The ``Engine``/``Trainer`` arguments of a precision: ``precision=...`` or a precision plugin.

    A mixed precision (``bf16-mixed``, ``16-mixed``) with ``f32_evaluation`` becomes
    ``plugins=[TrainOnlyMixedPrecision(...)]``: autocast in the training steps only, so anomaly maps,
    scores and the thresholds set on validation are not rounded to 16 bits. Otherwise Lightning's own
    ``precision`` (a mixed one then autocasts evaluation steps too).
    """
    if precision in MIXED_PRECISIONS and f32_evaluation:
        from anomalib_hyperbolic.precision import TrainOnlyMixedPrecision, autocast_device

        return {"plugins": [TrainOnlyMixedPrecision(precision, device=autocast_device(accelerator))]}  # type: ignore[arg-type]
    return {"precision": precision}


def validation_interval(spec: dict[str, Any], trainer_arguments: dict[str, Any] | None = None) -> int:
    """The cell's ``check_val_every_n_epoch``: its own when set, else one validation at the end when possible.

    Lightning validates after epoch ``e`` when ``(e + 1) % N == 0``. An epoch-based cell (more than one
    epoch, no ``max_steps``, no ``max_time``) gets ``N = max_epochs``: one validation, after the last
    epoch, from which anomalib sets its thresholds and normalisation, instead of one per epoch. Every
    other cell gets 1 (Lightning's default): a step or time limit may end training before the last
    epoch, which would then leave it unvalidated. ``trainer_arguments`` (the model's own, e.g. PaDiM's
    ``max_epochs: 1``) override the cell's limits, as anomalib's ``Engine`` does.
    """
    if spec.get("check_val_every_n_epoch") is not None:
        return int(spec["check_val_every_n_epoch"])
    limits = {"max_epochs": spec.get("max_epochs", 1), "max_steps": spec.get("max_steps", -1)}
    limits = {**limits, "max_time": spec.get("max_time"), **(trainer_arguments or {})}
    max_epochs, max_steps = limits.get("max_epochs"), limits.get("max_steps")
    if limits.get("max_time") or (max_steps is not None and int(max_steps) >= 0):
        return 1
    return int(max_epochs) if max_epochs is not None and int(max_epochs) > 1 else 1


def _prepare(config: dict[str, Any], spec: dict[str, Any]) -> tuple[Any, dict[str, int], Any]:
    """Seed, then the cell's datamodule (set up, subset applied), its split sizes and its model.

    The same order of steps for training and for ``--time-only``, so a rebuilt model starts from
    the same random state as the one that was trained.
    """
    from lightning.pytorch import seed_everything

    seed_everything(cell_seed(config, spec), workers=True)
    data_cfg = config["data"]
    data_args = {**data_cfg.get("init_args", {}), **spec.get("data_overrides", {})}
    datamodule = _import(data_cfg["class_path"])(**data_args)
    datamodule.prepare_data()  # materialise the data on a first run (ELPV); a no-op once done
    wrapper = spec.get("data_wrapper")
    if wrapper:
        datamodule = _import(wrapper["class_path"])(datamodule=datamodule, **wrapper.get("init_args", {}))
    split_sizes = apply_subset(datamodule, config.get("subset"))
    return datamodule, split_sizes, build_model(config, spec)


def run_cell(
    config: dict[str, Any], spec: dict[str, Any], cell_dir: Path, weights: Path | None = None
) -> dict[str, Any] | None:
    """Train, test and (unless ``latency: false``) time one model configuration; return its row.

    With ``weights``, the state that training changed is saved there (see :func:`trained_state`).
    Under DDP (a cell's ``devices``/``strategy``) only rank 0 returns the row; the other ranks ``None``.
    """
    import resource

    import torch
    from anomalib.engine import Engine

    from anomalib_hyperbolic.metrics import RawScoreMetrics, TrainingStepTimer

    if spec.get("latency_only"):
        return latency_only_cell(config, spec, cell_dir)
    datamodule, split_sizes, model = _prepare(config, spec)
    raw_scores = RawScoreMetrics(pixel_metrics=bool(config.get("pixel_metrics", True)))
    step_timer = TrainingStepTimer()
    initial = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()} if weights else {}
    limits = {"max_epochs": spec.get("max_epochs", 1), "max_steps": spec.get("max_steps", -1)}
    if spec.get("max_time"):
        limits["max_time"] = spec["max_time"]
    accelerator = spec.get("accelerator", config.get("accelerator", "cpu"))
    precision, f32_evaluation = cell_precision(config, spec)
    engine = Engine(
        **limits,
        **precision_arguments(precision, f32_evaluation, accelerator),
        check_val_every_n_epoch=validation_interval(spec, getattr(model, "trainer_arguments", None)),
        accelerator=accelerator,
        devices=spec.get("devices", config.get("devices", 1)),
        strategy=spec.get("strategy", config.get("strategy", "auto")),
        default_root_dir=cell_dir,
        logger=False,
        enable_progress_bar=False,
        callbacks=[raw_scores, step_timer],  # raw_scores: a trainer callback, runs before the post-processor
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    # what training actually ran: a max_time cap can stop it before max_steps / max_epochs
    reached = {"steps_run": engine.trainer.global_step, "epochs_run": engine.trainer.current_epoch}
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]  # every rank: metrics sync
    if not engine.trainer.is_global_zero:
        return None  # under DDP rank 0 alone saves, times and writes the cell
    row: dict[str, Any] = {"name": spec["name"], "train_seconds": train_seconds, **reached, **limits}
    # training-loop throughput (TrainingStepTimer: set-up passes and the first step excluded); steps are
    # optimiser steps (each rank takes every one), images are counted over all ranks
    row["world_size"] = engine.trainer.world_size
    row["precision"] = str(engine.trainer.precision)  # the trainer's, after the model's trainer_arguments
    if row["precision"] in MIXED_PRECISIONS:
        row["f32_evaluation"] = f32_evaluation
    row["check_val_every_n_epoch"] = engine.trainer.check_val_every_n_epoch
    if step_timer.steps_per_second is not None:
        row["train_steps_per_second"] = step_timer.steps_per_second
        batch = getattr(datamodule, "train_batch_size", None)
        if batch:
            row["train_images_per_second"] = step_timer.steps_per_second * batch * engine.trainer.world_size
    row.update({key: float(value) for key, value in metrics.items()})
    row.update(raw_scores.results)
    row["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        row["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["gpu"] = torch.cuda.get_device_name()
    if weights is not None:
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(trained_state(model, initial), weights)
    if config.get("latency", {}) is not False:
        model.cpu()
        row.update(time_model(config, model, cell_dir / "export"))
    if config.get("precision_effect"):
        model.cpu()
        row.update(precision_effect(config, spec, model, datamodule, cell_dir / "export_precision"))
    row["split_sizes"] = split_sizes
    row["code_version"] = _code_version()
    row["seed"] = cell_seed(config, spec)
    if "group" in spec:
        row["group"] = spec["group"]
    row["class_path"] = spec["class_path"]
    row["init_args"] = spec.get("init_args", {})
    row["normalization"] = normalization_record(config, spec, model)
    for key in ("data_wrapper", "data_overrides"):
        if spec.get(key):
            row[key] = spec[key]
    return row


PRECISIONS = ("f32", "default")  # OpenVINO's INFERENCE_PRECISION_HINT f32, and the device's own default


def precision_effect(
    config: dict[str, Any], spec: dict[str, Any], model: Any, datamodule: Any, export_dir: Path
) -> dict[str, Any]:
    """Test metrics and batch-1 latency of the exported OpenVINO graph at f32 and at the default precision.

    The test images go through the exported graph (anomalib's pre-processing, model and
    post-processing) alone, resized to the cell's input size (masks with nearest neighbours), once
    per precision; anomalib's AUROC and AUPRO are computed on its normalised outputs. Keys:
    ``ov_<precision>_image_AUROC`` (and ``pixel_AUROC``, ``pixel_AUPRO`` with masks),
    ``ov_<precision>_latency_ms_b1``, and ``ov_max_score_change`` (largest |score difference| between
    the precisions over the test images). A failure is recorded in the row, not raised.
    """
    try:
        return _precision_effect(config, spec, model, datamodule, export_dir)
    except Exception as error:
        logger.exception("precision-effect measurement failed")
        return {"precision_effect_error": f"{type(error).__name__}: {error}"[:500]}


def _precision_effect(
    config: dict[str, Any], spec: dict[str, Any], model: Any, datamodule: Any, export_dir: Path
) -> dict[str, Any]:
    import numpy as np
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    from anomalib_hyperbolic.metrics import MetricFields, threshold_free_metrics

    image_size = cell_image_size(config, spec)
    with_masks = bool(config.get("pixel_metrics", True))
    model.eval()
    xml = model.to_openvino(export_root=export_dir, input_size=(image_size, image_size))
    figures: dict[str, Any] = {}
    scores: dict[str, list[float]] = {}
    settings = config.get("latency") or {}
    for precision in PRECISIONS:
        request, graph_batch, _ = _openvino_request(xml, 1, image_size, precision)
        metrics = threshold_free_metrics(pixel_metrics=with_masks)
        scores[precision] = []
        for batch in datamodule.test_dataloader():
            images = resize(batch.image, [image_size, image_size], antialias=True)
            for index in range(images.shape[0]):
                array = np.repeat(images[index : index + 1].numpy(), graph_batch, axis=0)
                outputs = {name: value for key, value in request.infer([array]).items() for name in key.get_names()}
                score = torch.from_numpy(np.array(outputs["pred_score"])).reshape(-1)[:1].float()
                fields: dict[str, torch.Tensor] = {"pred_score": score, "gt_label": batch.gt_label[index : index + 1]}
                if with_masks and batch.gt_mask is not None and "anomaly_map" in outputs:
                    anomaly_map = torch.from_numpy(np.array(outputs["anomaly_map"]))[:1].float()
                    mask = resize(
                        batch.gt_mask[index : index + 1].unsqueeze(1).float(),
                        [image_size, image_size],
                        interpolation=InterpolationMode.NEAREST,
                    )
                    fields["anomaly_map"] = anomaly_map.reshape(1, image_size, image_size)
                    fields["gt_mask"] = mask.reshape(1, image_size, image_size).bool()
                for metric in metrics:
                    metric.update(MetricFields(**fields))
                scores[precision].append(float(score[0]))
        for metric in metrics:
            if metric.update_called:
                figures[f"ov_{precision}_{metric.name}"] = float(metric.compute())
        array = np.random.default_rng(0).random((graph_batch, 3, image_size, image_size), dtype=np.float32)
        seconds = _median_seconds(
            lambda request=request, array=array: request.infer([array]),
            max(int(settings.get("runs", 20)), 20),
            int(settings.get("warmup", 5)),
        )
        figures[f"ov_{precision}_latency_ms_b1"] = seconds * 1000
    figures["ov_max_score_change"] = float(np.max(np.abs(np.subtract(*[scores[p] for p in PRECISIONS]))))
    return figures


def _code_version() -> str:
    """``git describe``-like ``<commit>[+changes]`` of the package's checkout, or ``unknown``."""
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+changes" if changed else commit


def time_model(
    config: dict[str, Any], model: Any, export_dir: Path | None = None, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """CPU latency figures of a trained model (a failure is recorded in the row, not raised)."""
    import tempfile

    import torch

    torch.set_num_threads(int(os.environ.get("BENCHMARK_THREADS", torch.get_num_threads())))
    latency_size = int(config.get("latency_image_size", config.get("image_size", 256)))
    settings = settings if settings is not None else (config.get("latency") or {})
    try:
        with tempfile.TemporaryDirectory() as scratch:
            return _latency(model, export_dir or Path(scratch), latency_size, settings)
    except Exception as error:  # keep the trained cell's metrics; say why timing failed
        logger.exception("latency measurement failed")
        return {"latency_error": f"{type(error).__name__}: {error}"[:500]}


def _machine() -> str:
    """CPU model and core count of this machine, e.g. ``AMD EPYC 9B14, 2 cpus``."""
    import platform

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cpus"


def _untrained_model(config: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A latency-only cell's model: built, not trained, its ``latency_only.buffers`` filled with noise.

    ``latency_only: {buffers: {model.memory_bank: [74137, 152]}}`` gives anomalib's PatchCore the
    memory bank it would keep from a larger training set, so its latency can be timed without
    training on that set. Values are seeded Gaussian noise: only their shape matters for timing.
    """
    import torch

    _, _, model = _prepare(config, spec)
    generator = torch.Generator().manual_seed(cell_seed(config, spec))
    for key, shape in ((spec["latency_only"] or {}).get("buffers") or {}).items():
        module_name, _, name = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if name not in module._buffers:
            msg = f"latency_only.buffers: {key!r} is not a registered buffer of {spec['class_path']}"
            raise ValueError(msg)
        module._buffers[name] = torch.randn(*shape, generator=generator)
    return model.eval()


def latency_only_cell(config: dict[str, Any], spec: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
    """A cell that is timed, not trained (see :func:`_untrained_model`).

    With ``latency: false`` its timing is left to ``--time-only``.
    """
    row: dict[str, Any] = {"name": spec["name"], "latency_only": spec["latency_only"], "class_path": spec["class_path"]}
    row["init_args"] = spec.get("init_args", {})
    if config.get("latency", {}) is not False:
        row.update(time_model(config, _untrained_model(config, spec), cell_dir / "export"))
        row["latency_machine"] = _machine()
    row["code_version"] = _code_version()
    return row


def time_cell(config: dict[str, Any], spec: dict[str, Any], row: dict[str, Any], weights: Path) -> dict[str, Any]:
    """Rebuild a cell trained elsewhere, load its saved state, and add this CPU's latency to its row.

    A latency-only cell needs no saved state: it is rebuilt as :func:`_untrained_model` makes it.
    """
    import torch

    if spec.get("latency_only"):
        model = _untrained_model(config, spec)
    else:
        _, _, model = _prepare(config, spec)
        load_trained_state(model, torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    # `latency_after`: the timing settings of a grid trained with `latency: false`
    timed = time_model(config, model, settings=config.get("latency_after") or config.get("latency") or {})
    timed["latency_machine"] = _machine()
    return {**row, **timed}


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------


def _cell_file(output: Path, name: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return output / "cells" / f"{safe}.json"


def prepare_files(config: dict[str, Any]) -> None:
    """Make every file or folder listed under ``prepare`` that does not exist yet, in order.

    Each entry is ``{path: P, function: dotted.name, init_args: {...}, path_arg: NAME}`` and calls
    ``function(P, **init_args)`` (or ``function(NAME=P, **init_args)``) when ``P`` is missing: how a
    fresh machine gets what cells need, e.g. ELPV's images, a distilled PDN teacher, or the generated
    images of a ``--smoke`` run. A function that returns without writing ``P`` is an error.
    """
    for step in config.get("prepare") or []:
        path = Path(step["path"])
        if path.exists():
            continue
        function = _import(step["function"])
        arguments = dict(step.get("init_args") or {})
        if step.get("path_arg"):
            function(**{step["path_arg"]: path}, **arguments)
        else:
            function(path, **arguments)
        if not path.exists():
            msg = f"benchmark prepare step {step['function']} did not write {str(path)!r}"
            raise RuntimeError(msg)


def provision(config: dict[str, Any]) -> None:
    """Write the offline backbone files named by ``provision: {weights: FILE, hf_home: DIR}`` (idempotent).

    The local weights file serves this package's models, the Hugging Face cache anomalib's (with
    ``env: {HF_HOME: DIR, HF_HUB_OFFLINE: "1"}``): the same ImageNet weights for every cell.
    """
    wanted = config.get("provision")
    if not wanted:
        return
    from anomalib_hyperbolic.backbones import provision_efficientnet_lite0

    provision_efficientnet_lite0(output=wanted.get("weights"), hf_home=wanted.get("hf_home"))


def prepare_data_once(config: dict[str, Any]) -> None:
    """Call the datamodule's ``prepare_data()`` once, before cells run (in parallel) and set it up.

    A data set that materialises on first use (ELPV writes its images and ``labels.csv``) is then
    complete before any cell reads it.
    """
    data_cfg = config["data"]
    _import(data_cfg["class_path"])(**data_cfg.get("init_args", {})).prepare_data()


def run_grid(
    config_path: str | Path,
    only: Sequence[str] | None = None,
    parallel: int = 1,
    time_only: bool = False,
    smoke: bool = False,
    precision: bool = False,
) -> list[dict[str, Any]]:
    """Run every missing cell in a subprocess (``parallel`` at a time), then write the tables and plots.

    Before the cells, once: the backbone provisioning (``provision``), the ``prepare`` steps (see
    :func:`prepare_files`) and the datamodule's ``prepare_data()``. With ``time_only``, nothing
    is trained: every finished cell that has saved weights and no latency figures is rebuilt and
    timed on this machine instead.
    With ``smoke``, the config's ``smoke`` size runs (see :func:`apply_smoke`). With ``precision``,
    every cell also scores its test images with OpenVINO at f32 and at the default precision
    (:func:`precision_effect`), as does ``precision_effect: true`` in the config.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    config = load_config(config_path, smoke=smoke)
    output = Path(config["output"])
    (output / "cells").mkdir(parents=True, exist_ok=True)
    specs = [spec for spec in config["models"] if not only or spec["name"] in only or spec.get("group") in only]
    env = {**os.environ, **{key: str(value) for key, value in (config.get("env") or {}).items()}}
    if not time_only:
        provision(config)  # first: prepare steps may need the weights (e.g. distilling a PDN teacher)
        prepare_files(config)
        prepare_data_once(config)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn()) as progress:
        task = progress.add_task("benchmark" if not time_only else "timing", total=len(specs))

        def run_one(spec: dict[str, Any]) -> None:
            target = _cell_file(output, spec["name"])
            if time_only:
                reason = _untimed_reason(output, spec["name"])
                if reason:
                    progress.console.print(f"[dim]{spec['name']}: not timed ({reason})")
                    progress.advance(task)
                    return
            elif target.is_file():
                progress.console.print(f"[dim]{spec['name']}: done earlier, kept ({target})")
                progress.advance(task)
                return
            progress.console.print(f"{spec['name']}: started")
            command = [sys.executable, "-m", "anomalib_hyperbolic.benchmark", "--cell", spec["name"]]
            command += ["--config", str(config_path), *(["--time-only"] if time_only else [])]
            command += ["--smoke"] if smoke else []
            command += ["--precision-effect"] if precision else []
            log = output / "cells" / f"{target.stem}{'.timing' if time_only else ''}.log"
            with log.open("w") as handle:
                result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                progress.console.print(f"[red]{spec['name']}: failed (exit {result.returncode}), see {log}")
            else:
                progress.console.print(f"{spec['name']}: finished")
            progress.advance(task)

        with ThreadPoolExecutor(max_workers=max(1, int(parallel))) as pool:
            list(pool.map(run_one, specs))
    rows = collect(output)
    write_tables(rows, output)
    write_precision_table(rows, output)
    plot(rows, output)
    return rows


def _untimed_reason(output: Path, name: str) -> str:
    """Why a cell cannot (or need not) be timed by ``--time-only``; empty when it should be."""
    target = _cell_file(output, name)
    if not target.is_file():
        return "not trained yet"
    row = json.loads(target.read_text())
    if "torch_latency_ms_b1" in row:
        return "already timed"
    if not row.get("latency_only") and not _weights_file(output, name).is_file():
        return f"no saved weights at {_weights_file(output, name)}"
    return ""


def collect(output: Path) -> list[dict[str, Any]]:
    """Rows of every finished cell."""
    return [json.loads(path.read_text()) for path in sorted((output / "cells").glob("*.json"))]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def seed_summary(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (n - 1) of every metric over cells that differ only in ``seed``.

    Cells expanded from one model's ``seeds`` share its ``group``; other cells are grouped by class,
    init arguments, training limits, data wrapper, data overrides and training precision (``precision``,
    ``f32_evaluation``), named after their first cell without a trailing seed tag (``" s1"``). Returns
    one entry per group, in first-seen order, with
    ``seeds``, ``class_path``, ``init_args`` and, per metric and latency column, ``<column>_mean``, ``<column>_std`` and
    ``<column>_values`` (one value per seed).
    """
    import re

    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        limits = [row.get(key) for key in ("max_epochs", "max_steps", "max_time")]
        data = [row.get("data_wrapper"), row.get("data_overrides")]  # e.g. DRA's K and seen class
        # the training precision (rows written before it was recorded trained at 32-true)
        precision = [row.get("precision") or "32-true", row.get("f32_evaluation")]
        key = json.dumps(
            [row.get("class_path"), row.get("init_args", {}), limits, data, precision], sort_keys=True, default=str
        )
        groups.setdefault(f"group:{row['group']}" if "group" in row else key, []).append(row)
    summary = []
    for members in groups.values():
        first = members[0]
        entry: dict[str, Any] = {
            "name": first.get("group") or re.sub(r"\s+s\d+$", "", first["name"]),
            "seeds": [member.get("seed") for member in members],
            "class_path": first.get("class_path", ""),
            "init_args": first.get("init_args", {}),
        }
        for column in columns or (*SUMMARY_COLUMNS, *LATENCY_COLUMNS, *TRAINING_COLUMNS):
            values = [float(member[column]) for member in members if member.get(column) is not None]
            if values:
                entry[f"{column}_values"] = values
                entry[f"{column}_mean"] = statistics.fmean(values)
                entry[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def write_tables(rows: list[dict[str, Any]], output: Path) -> None:
    """``results.csv`` and ``results.md`` with one row per cell, and ``summary.md``/``.csv`` over seeds.

    The summary (mean ± std per configuration, see :func:`seed_summary`) is written when some
    configuration ran with more than one seed or came from a ``seeds`` list; its columns are the
    metrics any cell has, then the means of training time and latency (each a median of runs).
    """
    with (output / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_format(row.get(key)) for key in COLUMNS) + " |" for row in rows]
    (output / "results.md").write_text("\n".join(lines) + "\n")
    summary = seed_summary(rows)
    if not any(len(entry["seeds"]) > 1 for entry in summary) and not any("group" in row for row in rows):
        return
    columns = [
        column
        for column in (*SUMMARY_COLUMNS, *TRAINING_COLUMNS, *LATENCY_COLUMNS)
        if any(f"{column}_mean" in entry for entry in summary)
    ]
    header = ["name", "seeds", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with (output / "summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "seeds", *(f"{column}_{part}" for column in columns for part in ("mean", "std"))])
        for entry in summary:
            seeds = ", ".join(str(seed) for seed in entry["seeds"])
            cells = [entry["name"], seeds]
            for column in columns:
                if f"{column}_mean" not in entry:
                    cells.append("")
                else:  # metrics to 3 decimals, seconds and milliseconds to 1; one seed: no spread
                    digits = 3 if column in SUMMARY_COLUMNS else 2 if column.endswith("per_second") else 1
                    spread = f" ± {entry[f'{column}_std']:.{digits}f}" if len(entry[f"{column}_values"]) > 1 else ""
                    cells.append(f"{entry[f'{column}_mean']:.{digits}f}{spread}")
            lines.append("| " + " | ".join(cells) + " |")
            values = [entry.get(f"{column}_{part}", "") for column in columns for part in ("mean", "std")]
            writer.writerow([entry["name"], seeds, *values])
    (output / "summary.md").write_text("\n".join(lines) + "\n")


PRECISION_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def write_precision_table(rows: list[dict[str, Any]], output: Path) -> None:
    """``precision.md``: each configuration's OpenVINO metrics at f32 and at the default precision (over seeds).

    From the ``ov_*`` keys of ``precision_effect`` cells: per metric the f32 mean, the default
    precision's mean, and the largest |default - f32| of any seed (the issue's bound is per run); then
    the largest |score change|, both batch-1 latencies and the speed-up. Nothing is written when no
    cell measured it.
    """
    derived = []
    for row in rows:
        if row.get("ov_f32_latency_ms_b1") is None:
            continue
        extra = {}
        for metric in PRECISION_METRICS:
            f32, default = row.get(f"ov_f32_{metric}"), row.get(f"ov_default_{metric}")
            if f32 is not None and default is not None:
                extra[f"ov_change_{metric}"] = abs(float(default) - float(f32))
        derived.append({**row, **extra})
    if not derived:
        return
    columns = [
        *(f"ov_{kind}_{metric}" for metric in PRECISION_METRICS for kind in ("f32", "default", "change")),
        "ov_max_score_change",
        "ov_f32_latency_ms_b1",
        "ov_default_latency_ms_b1",
    ]
    header = ["name", "seeds"]
    header += [f"{metric} f32 / default (worst Δ)" for metric in PRECISION_METRICS]
    header += ["max Δ score", "f32 ms", "default ms", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in seed_summary(derived, columns):
        cells = [entry["name"], ", ".join(str(seed) for seed in entry["seeds"])]
        for metric in PRECISION_METRICS:
            if f"ov_f32_{metric}_mean" not in entry:
                cells.append("")
                continue
            worst = max(entry[f"ov_change_{metric}_values"])
            cells.append(
                f"{entry[f'ov_f32_{metric}_mean']:.3f} / {entry[f'ov_default_{metric}_mean']:.3f} ({worst:.3f})"
            )
        f32_ms, default_ms = entry["ov_f32_latency_ms_b1_mean"], entry["ov_default_latency_ms_b1_mean"]
        score = entry.get("ov_max_score_change_values")
        cells += [
            f"{max(score):.3f}" if score else "",
            f"{f32_ms:.1f}",
            f"{default_ms:.1f}",
            f"{f32_ms / default_ms:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    (output / "precision.md").write_text("\n".join(lines) + "\n")


PLOTTED_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def plot(rows: list[dict[str, Any]], output: Path) -> None:
    """One figure per question, each configuration's seeds pooled (mean, error bar = std over seeds).

    ``metrics.png``: accuracy per model (horizontal bars, so long names never overlap);
    ``latency_vs_aupro.png``: CPU latency against AUPRO, each model's PyTorch and OpenVINO points joined
    (only when some configuration was timed and scored; a stale figure from an earlier run is removed);
    ``hypad_curvature.png`` (only with HypAD cells; a stale one is removed): AUPRO and AUROC against the
    curvature, one line per clipping radius.
    """
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    summary = seed_summary(rows)
    if not summary:
        return
    metrics = [key for key in PLOTTED_METRICS if any(f"{key}_mean" in entry for entry in summary)]
    # latency-only configurations have no accuracy bar to draw
    scored = [entry for entry in summary if any(f"{key}_mean" in entry for key in metrics)]
    height = 0.8 / max(1, len(metrics))
    figure, axis = plt.subplots(figsize=(8, 1.0 + 0.25 * len(scored) * max(1, len(metrics))))
    for index, key in enumerate(metrics):
        positions = [i + index * height for i in range(len(scored))]
        means = [entry.get(f"{key}_mean", float("nan")) for entry in scored]
        errors = [entry.get(f"{key}_std", 0.0) for entry in scored]
        axis.barh(positions, means, height=height, xerr=errors, capsize=2, label=key)
    labels = [f"{entry['name']} (n={len(entry['seeds'])})" for entry in scored]
    axis.set_yticks([i + height * (len(metrics) - 1) / 2 for i in range(len(scored))], labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("mean over seeds (error bar: std)")
    axis.legend(fontsize=7, loc="lower right")
    axis.set_title("accuracy per model")
    figure.tight_layout()
    figure.savefig(output / "metrics.png", dpi=120)
    plt.close(figure)

    timed = []  # (colour index, configuration, its (latency, marker) points)
    for index, entry in enumerate(summary):
        points = [
            (entry[f"{runtime}_latency_ms_b1_mean"], marker)
            for runtime, marker in (("torch", "o"), ("openvino", "s"))
            if f"{runtime}_latency_ms_b1_mean" in entry
        ]
        if points and "pixel_AUPRO_mean" in entry:
            timed.append((index, entry, points))
    if not timed:  # e.g. a `latency: false` grid: no empty figure (and none left from an earlier run)
        (output / "latency_vs_aupro.png").unlink(missing_ok=True)
    else:
        figure, axis = plt.subplots(figsize=(8, 5))
        for index, entry, points in timed:
            aupro, spread, colour = entry["pixel_AUPRO_mean"], entry["pixel_AUPRO_std"], f"C{index % 10}"
            latencies = [latency for latency, _ in points]
            axis.plot(latencies, [aupro] * len(points), "-", color=colour, label=entry["name"])
            for latency, marker in points:
                axis.errorbar(latency, aupro, yerr=spread, fmt=marker, color=colour, capsize=2)
        axis.set_xscale("log")
        axis.set_xlabel("CPU latency, batch 1 (ms, log); o PyTorch, s OpenVINO")
        axis.set_ylabel("AUPRO (mean ± std over seeds)")
        axis.set_title("latency vs AUPRO")
        axis.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
        figure.tight_layout()
        figure.savefig(output / "latency_vs_aupro.png", dpi=120)
        plt.close(figure)

    hypad = [entry for entry in summary if entry["class_path"].endswith("HypAD")]
    if hypad:
        # HypAD's defaults: c = 0.01, clipping radius 2.3 (a None radius is "no clipping")
        def curvature(entry: dict[str, Any]) -> float:
            return float(entry["init_args"].get("c", entry["init_args"].get("curvature", 0.01)))

        def radius(entry: dict[str, Any]) -> str:
            value = entry["init_args"].get("clip_radius", 2.3)
            return "none" if value is None else f"{float(value):g}"

        figure, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True)
        for style, clip in zip(("-", "--", ":", "-."), sorted({radius(entry) for entry in hypad}), strict=False):
            group = sorted((entry for entry in hypad if radius(entry) == clip), key=curvature)
            for axis, key in zip(axes, ("pixel_AUPRO", "image_AUROC"), strict=True):
                axis.errorbar(
                    [curvature(entry) for entry in group],
                    [entry.get(f"{key}_mean", float("nan")) for entry in group],
                    yerr=[entry.get(f"{key}_std", 0.0) for entry in group],
                    fmt=style + "o",
                    capsize=2,
                    label=f"clip {clip}",
                )
                axis.set_title(key)
        for axis in axes:
            axis.set_xscale("symlog", linthresh=0.001)
            axis.set_xlabel("curvature c")
            axis.legend(fontsize=7)
        figure.suptitle("HypAD: curvature and clipping (mean ± std over seeds)")
        figure.tight_layout()
        figure.savefig(output / "hypad_curvature.png", dpi=120)
        plt.close(figure)
    else:  # like the latency figure: none left from an earlier run with HypAD cells
        (output / "hypad_curvature.png").unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-hyperbolic benchmark`` (and the per-cell subprocess entry)."""
    parser = argparse.ArgumentParser(prog="anomalib-hyperbolic benchmark", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", required=True, help="benchmark YAML (see module docs)")
    parser.add_argument("--only", nargs="*", help="run only these cell names")
    parser.add_argument("--parallel", type=int, default=1, help="cells run at once (e.g. several on one GPU)")
    parser.add_argument(
        "--time-only", action="store_true", help="train nothing: time the cells trained elsewhere (saved weights)"
    )
    parser.add_argument(
        "--precision-effect",
        action="store_true",
        help="also score the test images with the OpenVINO export at f32 and at the default precision",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="run the config's `smoke` size (tiny, generated data: what CI runs)"
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell in this process
    args = parser.parse_args(argv)
    if args.cell:
        config = load_config(args.config, smoke=args.smoke)
        config["precision_effect"] = config.get("precision_effect") or args.precision_effect
        spec = next((item for item in config["models"] if item["name"] == args.cell), None)
        if spec is None:
            parser.error(f"no model named {args.cell!r} in {args.config}")
        output = Path(config["output"])
        target = _cell_file(output, args.cell)
        if args.time_only:
            row = time_cell(config, spec, json.loads(target.read_text()), _weights_file(output, args.cell))
        else:
            save = spec.get("save_weights")
            save = config.get("save_weights", False) if save is None else save
            weights = _weights_file(output, args.cell) if save else None
            row = run_cell(config, spec, output / "runs" / target.stem, weights)
            if row is None:  # a DDP rank other than 0
                return 0
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(row, indent=2, default=str))
        temporary.replace(target)  # atomic: a cell counts as done only when complete
        return 0
    rows = run_grid(
        args.config,
        args.only,
        parallel=args.parallel,
        time_only=args.time_only,
        smoke=args.smoke,
        precision=args.precision_effect,
    )
    output = Path(load_config(args.config, smoke=args.smoke)["output"])
    print((output / ("summary.md" if (output / "summary.md").is_file() else "results.md")).read_text())
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
