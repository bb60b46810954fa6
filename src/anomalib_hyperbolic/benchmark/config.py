"""A benchmark config: YAML loading and checks, ``--smoke`` size, seeds, per-cell settings, preparation.

Config (YAML; the protocol configs are in ``configs/benchmark/``, e.g. ``mt_cpu.yaml``)::

    output: docs/results/mt_cpu
    seed: 0                                    # or seeds: [0, 1, 2] (one cell per model and seed)
    image_size: 256
    env: {HF_HOME: .cache/hf, HF_HUB_OFFLINE: "1"}     # offline backbone for anomalib's models
    provision: {weights: .cache/weights/tf_efficientnet_lite0.safetensors, hf_home: .cache/hf}
    data: {class_path: anomalib_hyperbolic.data.MagneticTile, init_args: {root: ...}}
    subset: {train: 0.25, test: 0.15, seed: 0, complement: [test]}   # optional seeded per-image draw
    pdn_teacher: teacher_small.pth             # optional local PDN teacher for EfficientAd and HypAD
    latency_image_size: 256                    # optional; defaults to image_size
    latency: {runs: 20, warmup: 5, batch_sizes: [1, 8], openvino_precision: f32}   # or false: no timing
    latency_after: {runs: 20, ...}             # timing settings for --time-only when latency is false
    precision_effect: false                    # also score the test images with OpenVINO f32 and default
    accelerator: cpu                           # training/testing device (gpu: train there, time later)
    normalization: model                       # or backbone / imagenet (see cell_model.build_model)
    precision: 32-true                         # Lightning's training precision, e.g. bf16-mixed (bf16 autocast)
    f32_evaluation: true                       # mixed precisions: validation/test/predict steps stay float32
    channels_last: false                       # train convolutions channels-last (precision.ChannelsLastTraining)
    save_weights: false                        # keep each cell's trained state for `--time-only`
    evaluate_on: test                          # or validation: score the datamodule's validation split
    prepare: [{path: ..., function: ..., init_args: {...}}]   # files made once before the cells
    models:
      - name: SimpleNet
        class_path: anomalib_hyperbolic.models.SimpleNet
        init_args: {backbone: .cache/weights/tf_efficientnet_lite0.safetensors, layers: [blocks.2, blocks.4]}
        max_epochs: 4
        data_wrapper: null          # or {class_path: ..., init_args: {...}} wrapping the datamodule (DRA)
        data_overrides: {}          # per-cell datamodule arguments (e.g. train_batch_size: 1 for EfficientAd)
        max_time: null              # optional Lightning wall-time cap, "DD:HH:MM:SS" (steps reached are recorded)
        save_weights: null          # per-cell override of save_weights
        seed: null                  # per-cell override of the training seed; or seeds: [...]
        normalization: null         # per-cell override: model | backbone | imagenet
        precision: null             # per-cell override of precision (e.g. bf16-mixed)
        f32_evaluation: null        # per-cell override of f32_evaluation
        channels_last: null         # per-cell override of channels_last
        evaluate_on: null           # per-cell override of evaluate_on
        probability_maps: null      # the raw anomaly_map is a probability (default: the model's
                                    # anomaly_map_is_probability): also score it at 0.5
        check_val_every_n_epoch: null   # default: see validation_interval
        latency_only: null          # {buffers: {...}}: timed, not trained (see cell_model.untrained_model)
        smoke: {}                   # this model's part of the --smoke size
    smoke: {output: ..., models: {max_epochs: 1}, ...}   # merged over the config by --smoke

``precision: bf16-mixed`` trains under bf16 autocast (Lightning's mixed precision, float32 weights);
with ``f32_evaluation`` (default) validation, test and prediction run in float32
(:class:`~anomalib_hyperbolic.precision.TrainOnlyMixedPrecision`), so anomaly maps, scores and the
thresholds set on validation are not rounded to bf16. An epoch-based cell validates once, after its
last epoch (see :func:`validation_interval`); step- or time-limited cells validate every epoch.

``evaluate_on: validation`` scores the cell on the datamodule's validation split instead of its
test split (:func:`evaluation_split`): the split on which design choices are measured, so that the
reported test images never choose a setting. The thresholds anomalib fits on that same split are
then applied to it, so the validation-fitted IoU is optimistic there; the row records
``evaluated_on`` and ``evaluated_images``. Training, the threshold fit and ``precision_effect``
(always the test split) are unchanged.

Every cell with masks also reports the mean per-type IoU (``pixel_CategoryIoU``, HADNet eqs. 14-15)
of its raw maps at the validation-fitted threshold, at an oracle threshold fitted on the evaluated
images (a diagnostic) and, for probability maps, at 0.5
(:class:`~anomalib_hyperbolic.metrics.CategoryIoUThresholds`), and the last training epoch's
logged ``train_*`` figures (losses; HADNet's and the U-Net's logit diagnostics).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any


def import_class(class_path: str) -> Any:
    """The object a dotted ``package.module.Name`` path names (a class, a function)."""
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


def cell_image_size(config: dict[str, Any], spec: dict[str, Any]) -> int:
    """The cell's input side: its own ``image_size`` when it has one, else the config's (256)."""
    return int(spec.get("image_size", config.get("image_size", 256)))


#: ``normalization`` values: the model's own pre-processor, the cell backbone's mean/std, ImageNet's.
NORMALIZATIONS = ("model", "backbone", "imagenet")


def cell_normalization(config: dict[str, Any], spec: dict[str, Any]) -> str:
    """The cell's ``normalization``: its own, else the config's, else ``"model"``.

    See :func:`~anomalib_hyperbolic.benchmark.cell_model.build_model` for what each value does.
    """
    mode = spec.get("normalization") or config.get("normalization") or "model"  # null: not set
    if mode not in NORMALIZATIONS:
        msg = f"benchmark model {spec.get('name')!r}: normalization must be one of {list(NORMALIZATIONS)}, got {mode!r}"
        raise ValueError(msg)
    return mode


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


def cell_channels_last(config: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether the cell trains in channels-last memory format: the cell's ``channels_last``, else the config's.

    Default ``False``; ``True`` adds :class:`~anomalib_hyperbolic.precision.ChannelsLastTraining`.
    """
    value = spec.get("channels_last")
    return bool(config.get("channels_last", False) if value is None else value)


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


#: ``evaluate_on`` values: the datamodule's test split (default) or its validation split.
EVALUATION_SPLITS = ("test", "validation")


def evaluation_split(config: dict[str, Any], spec: dict[str, Any]) -> str:
    """The split a cell is scored on: its own ``evaluate_on``, else the config's, else ``"test"``.

    ``"validation"`` scores the datamodule's ``val_dataloader()`` (e.g. Magnetic Tile's ratio split
    keeps defects with masks there): the split on which design choices are measured.
    """
    split = spec.get("evaluate_on") or config.get("evaluate_on") or "test"  # null: not set
    if split not in EVALUATION_SPLITS:
        msg = (
            f"benchmark model {spec.get('name')!r}: evaluate_on must be one of {list(EVALUATION_SPLITS)}, got {split!r}"
        )
        raise ValueError(msg)
    return split


def training_limits(spec: dict[str, Any]) -> dict[str, Any]:
    """The cell's ``max_epochs`` (1 by default), ``max_steps`` (-1: none) and ``max_time`` when it has one."""
    limits = {"max_epochs": spec.get("max_epochs", 1), "max_steps": spec.get("max_steps", -1)}
    if spec.get("max_time"):
        limits["max_time"] = spec["max_time"]
    return limits


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
        function = import_class(step["function"])
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
    import_class(data_cfg["class_path"])(**data_cfg.get("init_args", {})).prepare_data()
