"""A cell's datamodule and model: built from the config, trained state saved and restored.

:func:`prepare_cell` is the common start of training, ``--time-only`` and latency-only cells: seed,
datamodule (subset applied), model (:func:`build_model`: the cell's class, the common pre-processor
and :func:`evaluator`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from anomalib_hyperbolic.benchmark.config import cell_image_size, cell_normalization, cell_seed, import_class
from anomalib_hyperbolic.benchmark.subset import apply_subset


def evaluator(with_masks: bool) -> Any:
    """The benchmark's anomalib ``Evaluator``: threshold-free metrics, image F1; with masks mIoU and CategoryIoU."""
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
    model_class = import_class(spec["class_path"])
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
        evaluator=evaluator(bool(config.get("pixel_metrics", True))),
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


def prepare_cell(config: dict[str, Any], spec: dict[str, Any]) -> tuple[Any, dict[str, int], Any]:
    """Seed, then the cell's datamodule (set up, subset applied), its split sizes and its model.

    The same order of steps for training and for ``--time-only``, so a rebuilt model starts from
    the same random state as the one that was trained.
    """
    from lightning.pytorch import seed_everything

    seed_everything(cell_seed(config, spec), workers=True)
    data_cfg = config["data"]
    data_args = {**data_cfg.get("init_args", {}), **spec.get("data_overrides", {})}
    datamodule = import_class(data_cfg["class_path"])(**data_args)
    datamodule.prepare_data()  # materialise the data on a first run (ELPV); a no-op once done
    wrapper = spec.get("data_wrapper")
    if wrapper:
        datamodule = import_class(wrapper["class_path"])(datamodule=datamodule, **wrapper.get("init_args", {}))
    split_sizes = apply_subset(datamodule, config.get("subset"))
    return datamodule, split_sizes, build_model(config, spec)


def untrained_model(config: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A latency-only cell's model: built, not trained, its ``latency_only.buffers`` filled with noise.

    ``latency_only: {buffers: {model.memory_bank: [74137, 152]}}`` gives anomalib's PatchCore the
    memory bank it would keep from a larger training set, so its latency can be timed without
    training on that set. Values are seeded Gaussian noise: only their shape matters for timing.
    """
    import torch

    _, _, model = prepare_cell(config, spec)
    generator = torch.Generator().manual_seed(cell_seed(config, spec))
    for key, shape in ((spec["latency_only"] or {}).get("buffers") or {}).items():
        module_name, _, name = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if name not in module._buffers:
            msg = f"latency_only.buffers: {key!r} is not a registered buffer of {spec['class_path']}"
            raise ValueError(msg)
        module._buffers[name] = torch.randn(*shape, generator=generator)
    return model.eval()
