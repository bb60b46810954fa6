"""Pieces shared by this package's models (their ``AnomalibModule`` classes and torch models)."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from torch import nn
from torchvision import transforms as transforms_v1
from torchvision.transforms import v2

from anomalib_hyperbolic.backbones import IMAGENET_MEAN, IMAGENET_STD, backbone_normalization
from anomalib_hyperbolic.distributed import all_reduce_sum, is_distributed, shard_loader

logger = logging.getLogger(__name__)


class PortableCheckpointMixin:
    """Mixin for an ``AnomalibModule`` whose checkpoints must load whatever evaluator they were trained with.

    A mixin, not an ``AnomalibModule`` subclass, so that anomalib does not list it as a model.

    ``anomalib export --ckpt_path`` (``Engine.export``) rebuilds the model with its default
    ``Evaluator`` and loads the checkpoint strictly. Metric states saved from a custom evaluator
    (e.g. anomalib's ``AUPRO`` keeps ``fpr_limit`` as a buffer) then fail the load with
    "Unexpected key(s)", although they play no part in inference. Such ``evaluator.*`` entries
    are dropped (logged); every other key still loads strictly.
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the checkpoint's evaluator states that this instance's evaluator does not have."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        state = checkpoint.get("state_dict", {})
        own = set(self.state_dict())  # type: ignore[attr-defined]
        stale = [key for key in state if key.startswith("evaluator.") and key not in own]
        for key in stale:
            del state[key]
        if stale:
            logger.info("Checkpoint evaluator states not used by this model's evaluator, skipped: %s", stale)


class ChannelMoments:
    """Per-channel mean and standard deviation over every position of ``(B, C, ...)`` feature batches.

    Sums are accumulated in float64 (and kept on the CPU), so long passes over a training set stay
    exact enough; :meth:`compute` gives the population mean and standard deviation.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    @classmethod
    def from_statistics(cls, mean: torch.Tensor, std: torch.Tensor, count: int) -> ChannelMoments:
        """The moments of ``count`` values per channel with population ``mean`` and ``std`` (any shape, flattened)."""
        moments = cls()
        mean, std = mean.detach().double().flatten().cpu(), std.detach().double().flatten().cpu()
        moments.total, moments.squares, moments.count = count * mean, count * (std**2 + mean**2), count
        return moments

    def update(self, features: torch.Tensor) -> None:
        """Add the values of every position of ``features`` (channel axis 1)."""
        flat = features.detach().double().transpose(0, 1).flatten(1)
        total, squares = flat.sum(1).cpu(), flat.pow(2).sum(1).cpu()
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += flat.shape[1]

    def all_reduce(self) -> ChannelMoments:
        """Sum the counts and sums of every rank (under DDP; a no-op in one process); returns ``self``.

        Each rank must have added its own images (``distributed.shard``), so each image counts once.
        """
        if not is_distributed():
            return self
        if self.total is None or self.squares is None:
            msg = "No features were added to the channel statistics on this rank (fewer images than ranks?)."
            raise ValueError(msg)
        packed = all_reduce_sum(torch.cat([self.total, self.squares, self.total.new_tensor([self.count])]))
        channels = self.total.numel()
        self.total, self.squares, self.count = packed[:channels], packed[channels:-1], int(packed[-1])
        return self

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` per channel, float64.

        Raises:
            ValueError: when no features were added.
        """
        if self.total is None or self.squares is None or self.count == 0:
            msg = "No features were added to the channel statistics."
            raise ValueError(msg)
        mean = self.total / self.count
        return mean, (self.squares / self.count - mean.pow(2)).clamp_min(0).sqrt()


class ShardedTeacherStatisticsMixin:
    """Mixin for an ``EfficientAd`` subclass: its teacher channel mean/std under DDP, every image counted once.

    Each rank passes its shard of the training images to EfficientAd's ``teacher_channel_mean_std``;
    the shards' first and second moments, weighted by their image counts, are summed over the ranks.
    (EfficientAd's map quantiles need no such step: every rank computes them from the whole validation
    split.) In one process it is EfficientAd's method unchanged.
    """

    def teacher_channel_mean_std(self, dataloader: Any) -> dict[str, torch.Tensor]:
        """EfficientAd's teacher channel mean and std over all ranks' images."""
        if not is_distributed():
            return super().teacher_channel_mean_std(dataloader)  # type: ignore[misc]
        shard = shard_loader(dataloader)
        statistics = super().teacher_channel_mean_std(shard)  # type: ignore[misc]
        count = len(shard.dataset)
        moments = ChannelMoments.from_statistics(statistics["mean"], statistics["std"], count).all_reduce()
        mean, std = moments.compute()
        combined = {"mean": mean, "std": std}
        return {name: value.view_as(statistics[name]).to(statistics[name]) for name, value in combined.items()}


# ---------------------------------------------------------------------------------------------
# Input normalisation of the pre-processors
# ---------------------------------------------------------------------------------------------


def backbone_pre_processor(image_size: tuple[int, int], backbone: str | os.PathLike | None = None) -> PreProcessor:
    """Anomalib ``PreProcessor``: ``Resize(image_size, antialias=True)``, then ``Normalize`` for ``backbone``.

    The mean/std are :func:`~anomalib_hyperbolic.backbones.backbone_normalization`'s (timm's
    pretrained config of the backbone, e.g. ``0.5`` for ``tf_efficientnet_lite0``); ImageNet's when
    ``backbone`` is ``None``.
    """
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if backbone is None else backbone_normalization(backbone)
    return PreProcessor(
        transform=v2.Compose([v2.Resize(image_size, antialias=True), v2.Normalize(mean=list(mean), std=list(std))])
    )


def _normalize_transforms(pre_processor: nn.Module) -> Iterator[v2.Normalize | transforms_v1.Normalize]:
    """Every torchvision ``Normalize`` in a pre-processor (its ``transform``, ``export_transform``, nested ones)."""
    stack: list[Any] = [getattr(pre_processor, "export_transform", None), getattr(pre_processor, "transform", None)]
    stack.append(pre_processor)
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, v2.Normalize | transforms_v1.Normalize):
            yield item
        stack.extend(reversed(list(getattr(item, "transforms", None) or [])))


def pre_processor_normalization(pre_processor: nn.Module | None) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` of the first torchvision ``Normalize`` in a pre-processor's transform; ``None`` without one."""
    if pre_processor is None:
        return None
    for item in _normalize_transforms(pre_processor):
        return [float(value) for value in item.mean], [float(value) for value in item.std]
    return None


def with_normalization(pre_processor: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """A deep copy of ``pre_processor`` whose torchvision ``Normalize`` transforms use ``mean``/``std``.

    Both the transform and anomalib's ``export_transform`` are changed; the original is left as it was.

    Raises:
        ValueError: the pre-processor holds no ``Normalize``.
    """
    result = copy.deepcopy(pre_processor)
    found = False
    for item in _normalize_transforms(result):
        item.mean, item.std = [float(value) for value in mean], [float(value) for value in std]
        found = True
    if not found:
        msg = f"The pre-processor {type(pre_processor).__name__} has no torchvision Normalize to replace."
        raise ValueError(msg)
    return result


class FixedPixelThresholdPostProcessor(PostProcessor):
    """Anomalib's ``PostProcessor`` with the pixel threshold fixed at ``pixel_threshold`` (raw map units).

    For maps that are probabilities (a sigmoid head trained with BCE), ``0.5`` is the decision boundary
    the training loss defines. Anomalib's default fits the pixel threshold on the validation images by
    maximising the pooled pixel F1; on sharp probability maps that F1 is flat over a wide range and
    the fitted value can land at its low end (issue 32: 0.0034 on HADNet's validation maps, where the
    mean per-type IoU is the same at 0.0034 and at 0.5, but lower on other images). Everything else is
    anomalib's: the image threshold is still fitted on validation, and the maps are min-max normalised
    around the fixed threshold, so ``pred_mask`` is ``anomaly_map > pixel_threshold`` in raw units.

    Raises:
        ValueError: ``pixel_threshold`` is not a finite number.
    """

    def __init__(self, pixel_threshold: float = 0.5, **kwargs: Any) -> None:
        if isinstance(pixel_threshold, bool) or not isinstance(pixel_threshold, (int, float)):
            msg = f"pixel_threshold must be a number, got {pixel_threshold!r}."
            raise ValueError(msg)
        if not math.isfinite(pixel_threshold):
            msg = f"pixel_threshold must be finite, got {pixel_threshold!r}."
            raise ValueError(msg)
        super().__init__(**kwargs)
        self.fixed_pixel_threshold = float(pixel_threshold)
        self._pixel_threshold.fill_(self.fixed_pixel_threshold)

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "fixed_pixel_threshold")

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Anomalib's fit of the image threshold and of the normalisation; the pixel threshold stays fixed."""
        self._pixel_threshold_metric.reset()  # its F1 fit would be discarded: skip computing it
        super().on_validation_epoch_end(trainer, pl_module)
        self._pixel_threshold.fill_(self.fixed_pixel_threshold)
