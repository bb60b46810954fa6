"""Metrics of anomalib-hyperbolic, usable in anomalib's :class:`~anomalib.metrics.Evaluator`.

:class:`MIoU` is the mean Intersection over Union of HADNet (eqs. 14-15):
``IoU = |A ∩ B| / |A ∪ B|`` (A = predicted region, B = true region) per class, accumulated over
the whole test set, and ``mIoU = (1/N) sum_n IoU_n`` over the N classes. For anomaly
segmentation the classes are *normal* (background) and *anomalous* pixels; with
``include_background=False`` only the anomalous class counts (the defect IoU).

Example:
    >>> from anomalib.metrics import Evaluator
    >>> from anomalib_hyperbolic.metrics import MIoU
    >>> evaluator = Evaluator(test_metrics=[MIoU(fields=["pred_mask", "gt_mask"], prefix="pixel_")])
"""

from __future__ import annotations

import time
from typing import Any

import torch
from anomalib.metrics import AnomalibMetric
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric

__all__ = ["MIoU", "RawScoreMetrics", "TrainingStepTimer", "threshold_free_metrics"]


class _MIoU(Metric):
    """Dataset-level mean IoU of binary masks (HADNet eqs. 14-15).

    Args:
        include_background: Average the IoU of the normal and the anomalous class (standard
            semantic-segmentation mIoU); ``False`` = IoU of the anomalous class only.
        threshold: Predictions that are not boolean/integer (e.g. anomaly maps in ``[0, 1]``) are
            binarised with ``pred > threshold``.
        absent_score: IoU of a class with an empty union (absent from both prediction and truth).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        include_background: bool = True,
        threshold: float = 0.5,
        absent_score: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.include_background = include_background
        self.threshold = threshold
        self.absent_score = absent_score
        self.add_state("intersection", default=torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")

    def _binarise(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if x.dtype == torch.bool:
            return x
        if x.is_floating_point():
            return x > self.threshold
        if name == "target" and ((x != 0) & (x != 1)).any():
            msg = "MIoU expects binary ground-truth masks (0/1 or bool)."
            raise ValueError(msg)
        return x != 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate the intersection and union of both classes.

        Args:
            preds: Predicted masks (bool/int) or scores (float, binarised at ``threshold``).
            target: Ground-truth masks, same number of elements as ``preds``.
        """
        if preds.numel() != target.numel():
            msg = f"MIoU: prediction {tuple(preds.shape)} and target {tuple(target.shape)} differ in size."
            raise ValueError(msg)
        pred = self._binarise(preds, "preds").reshape(-1)
        true = self._binarise(target, "target").reshape(-1)
        anomalous_inter = (pred & true).sum()
        anomalous_union = (pred | true).sum()
        normal_inter = (~pred & ~true).sum()
        normal_union = (~pred | ~true).sum()
        self.intersection += torch.stack([normal_inter, anomalous_inter]).to(self.intersection)
        self.union += torch.stack([normal_union, anomalous_union]).to(self.union)

    def per_class(self) -> torch.Tensor:
        """IoU of the (normal, anomalous) classes (eq. 14)."""
        absent = torch.full_like(self.union, self.absent_score)
        return torch.where(self.union > 0, self.intersection / self.union.clamp_min(1), absent)

    def compute(self) -> torch.Tensor:
        """Mean IoU (eq. 15)."""
        iou = self.per_class()
        value = iou.mean() if self.include_background else iou[1]
        return value.to(torch.float32)


class MIoU(AnomalibMetric, _MIoU):  # type: ignore[misc]
    """Anomalib wrapper of the mean IoU; default fields ``("pred_mask", "gt_mask")``.

    Example:
        >>> import torch
        >>> from anomalib.data import ImageBatch
        >>> metric = MIoU(prefix="pixel_")
        >>> batch = ImageBatch(
        ...     image=torch.rand(1, 3, 2, 2),
        ...     pred_mask=torch.tensor([[[1, 1], [0, 0]]]).bool(),
        ...     gt_mask=torch.tensor([[[1, 0], [0, 0]]]).bool(),
        ... )
        >>> metric.update(batch)
        >>> round(float(metric.compute()), 4)  # (1/2 + 2/3) / 2
        0.5833
    """

    default_fields = ("pred_mask", "gt_mask")


def threshold_free_metrics(prefix: str = "", pixel_metrics: bool = True, fpr_limit: float = 0.3) -> list[Metric]:
    """The image AUROC and, with ``pixel_metrics``, pixel AUROC and AUPRO of anomalib (FPR limit ``fpr_limit``).

    Named ``<prefix>image_AUROC``, ``<prefix>pixel_AUROC`` and ``<prefix>pixel_AUPRO``; the pixel
    metrics skip batches without masks (``strict=False``).
    """
    from anomalib.metrics import AUPRO, AUROC

    metrics: list[Metric] = [AUROC(fields=["pred_score", "gt_label"], prefix=f"{prefix}image_")]
    if pixel_metrics:
        metrics += [
            AUROC(fields=["anomaly_map", "gt_mask"], prefix=f"{prefix}pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix=f"{prefix}pixel_", strict=False, fpr_limit=fpr_limit),
        ]
    return metrics


class RawScoreMetrics(Callback):
    """Threshold-free test metrics on the model's raw, rank-preserving scores, before post-processing.

    anomalib's post-processor min-max normalises scores with statistics of the validation normals and
    clamps them to ``[0, 1]``: every test score beyond the clamp ties with the others there, which can
    only lower AUROC and AUPRO. Passed to the :class:`~anomalib.engine.Engine` as a trainer callback,
    this runs its ``on_test_batch_end`` before the model's own callbacks (post-processor, evaluator),
    so it collects ``pred_score`` and ``anomaly_map`` as the model produced them. At the end of the
    test epoch the scores (and, separately, the maps) are min-max rescaled over the whole test set,
    which keeps their ranks and stops torchmetrics from passing values outside ``[0, 1]`` through a
    sigmoid (raw distances of 40-60 all saturate to 1.0 in float32). :attr:`results` then holds
    ``raw_image_AUROC`` and, when the data has masks, ``raw_pixel_AUROC`` and ``raw_pixel_AUPRO``
    (FPR limit ``fpr_limit``, as anomalib's AUPRO).

    Example:
        >>> raw = RawScoreMetrics(pixel_metrics=False)
        >>> raw.results
        {}
    """

    def __init__(self, pixel_metrics: bool = True, fpr_limit: float = 0.3) -> None:
        super().__init__()
        self.pixel_metrics = pixel_metrics
        self.fpr_limit = fpr_limit
        self.collected: dict[str, list[torch.Tensor]] = {}
        self.results: dict[str, float] = {}

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start from nothing collected."""
        del trainer, pl_module
        self.collected, self.results = {}, {}

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Keep CPU copies of the batch's raw scores, maps and ground truth."""
        del trainer, pl_module, args, kwargs
        fields = ("pred_score", "gt_label", *(("anomaly_map", "gt_mask") if self.pixel_metrics else ()))
        for field in fields:
            value = getattr(outputs, field, None)
            if value is not None:
                self.collected.setdefault(field, []).append(value.detach().cpu())

    @staticmethod
    def _rescaled(values: torch.Tensor) -> torch.Tensor:
        """Min-max rescale to ``[0, 1]`` in float64 (rank-preserving; constant input gives zeros)."""
        values = values.double()
        low, high = values.min(), values.max()
        return (values - low) / (high - low) if high > low else torch.zeros_like(values)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Rescale what was collected and compute the figures into :attr:`results`."""
        del trainer, pl_module
        collected = {field: torch.cat(values) for field, values in self.collected.items()}
        if "pred_score" not in collected or "gt_label" not in collected:
            return
        for field in ("pred_score", "anomaly_map"):
            if field in collected:
                collected[field] = self._rescaled(collected[field])
        everything = _Fields(**collected)
        for metric in threshold_free_metrics("raw_", self.pixel_metrics, self.fpr_limit):
            metric.update(everything)  # the pixel metrics skip a test set without masks
            if metric.update_called:
                self.results[metric.name] = float(metric.compute())


class _Fields:
    """The attributes an :class:`~anomalib.metrics.AnomalibMetric` reads from a batch."""

    def __init__(self, **fields: torch.Tensor) -> None:
        self.__dict__.update(fields)


class TrainingStepTimer(Callback):
    """Optimiser steps per second of the training loop, counted from the end of the first step.

    The first step, and what runs before it (statistics passes, DDP set-up), is left out:
    ``steps_per_second = (steps - 1) / seconds`` up to the end of the last training batch (``None``
    with fewer than 2 steps). Under DDP every rank takes every step; images/s is steps/s times the
    global batch.
    """

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None
        self.steps = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        """Note the time of every training batch's end."""
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        else:
            self.steps += 1
            self.end = now

    @property
    def steps_per_second(self) -> float | None:
        """Training-loop steps per second after the first step."""
        if self.start is None or self.end is None or self.steps == 0:
            return None
        return self.steps / (self.end - self.start)
