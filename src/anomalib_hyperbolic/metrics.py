"""Metrics of anomalib-hyperbolic, usable in anomalib's :class:`~anomalib.metrics.Evaluator`.

:class:`CategoryIoU` is HADNet's metric as the paper reports it: the IoU of each defect type and
their mean (eqs. 14-15 over categories). :class:`MIoU` is the pooled binary version:
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
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from anomalib.metrics import AnomalibMetric
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.utilities import dim_zero_cat

from anomalib_hyperbolic.data.defect_types import defect_type_from_path

__all__ = ["CategoryIoU", "MIoU", "MetricFields", "RawScoreMetrics", "TrainingStepTimer", "threshold_free_metrics"]


def _jaccard_from_confmat(confmat: torch.Tensor, zero_division: float) -> torch.Tensor:
    """Per-class IoU of an accumulated confusion matrix (rows: true class), by torchmetrics' JaccardIndex."""
    metric = MulticlassJaccardIndex(
        num_classes=len(confmat),
        average="none",
        zero_division=zero_division,
        validate_args=False,
        sync_on_compute=False,
    )
    metric.merge_state({"confmat": confmat})  # counts already accumulated (and synchronised) by the caller
    with warnings.catch_warnings():  # filled by merge_state, not update: torchmetrics' "compute before update" warning
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
        return metric.compute()


class _MIoU(MulticlassJaccardIndex):
    """Dataset-level mean IoU of binary masks (HADNet eqs. 14-15): torchmetrics' two-class JaccardIndex.

    The confusion matrix of the normal (0) and anomalous (1) pixels is accumulated over the test set
    (torchmetrics' ``MulticlassJaccardIndex``, ``average="none"``); the mean is taken here so that a
    class absent from both prediction and truth scores ``absent_score`` and still counts (torchmetrics'
    ``"macro"`` would leave it out; for two classes both give the same value when ``absent_score`` is 1).
    torchmetrics divides in float32 (the earlier hand-written version in float64): values differ by at
    most a float32 rounding.

    Args:
        include_background: Average the IoU of the normal and the anomalous class (standard
            semantic-segmentation mIoU); ``False`` = IoU of the anomalous class only.
        threshold: Predictions that are not boolean/integer (e.g. anomaly maps in ``[0, 1]``) are
            binarised with ``pred > threshold``.
        absent_score: IoU of a class with an empty union (absent from both prediction and truth).
    """

    def __init__(
        self,
        include_background: bool = True,
        threshold: float = 0.5,
        absent_score: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=2, average="none", zero_division=absent_score, validate_args=False, **kwargs)
        self.include_background = include_background
        self.threshold = threshold
        self.absent_score = absent_score

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
        """Accumulate the confusion matrix of both classes.

        Args:
            preds: Predicted masks (bool/int) or scores (float, binarised at ``threshold``).
            target: Ground-truth masks, same number of elements as ``preds``.
        """
        if preds.numel() != target.numel():
            msg = f"MIoU: prediction {tuple(preds.shape)} and target {tuple(target.shape)} differ in size."
            raise ValueError(msg)
        pred = self._binarise(preds, "preds").reshape(-1).long()
        true = self._binarise(target, "target").reshape(-1).long()
        super().update(pred, true)

    def per_class(self) -> torch.Tensor:
        """IoU of the (normal, anomalous) classes (eq. 14)."""
        return super().compute()

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


class _CategoryIoU(Metric):
    """IoU per defect type and its mean over the types (HADNet eqs. 14-15 over defect categories).

    Each image's defect type comes from ``category_of(image_path)`` (default
    :func:`~anomalib_hyperbolic.data.defect_type_from_path`). ``IoU_n = |A ∩ B| / |A ∪ B|`` over the
    anomalous pixels of the images of type ``n``, accumulated over the test set; the background IoU
    is that of the normal pixels of every image. The result is the mean over the defect types, and
    with ``include_background`` over the defect types and the background: the paper's mean over
    categories, not :class:`MIoU`'s pooled binary IoU, which mixes every type into one class.

    This is torchmetrics' multiclass JaccardIndex (``average="none"``) where a pixel's class is
    background or its image's type: every image's confusion counts (true/false
    positives and negatives) are kept per type, since the types are only known once seen, and reduced
    by ``MulticlassJaccardIndex`` in :meth:`per_category`.

    Choices, since the predictions are binary (anomalous or not) and the types image-level:
    predicted defect pixels count towards the type of their image; images whose mask is empty (the
    normal images) have no type, and their false positives lower the background IoU only. Data whose
    paths carry no type (ELPV, NEU-Seg: see :func:`~anomalib_hyperbolic.data.defect_type_from_path`)
    is one category under the default ``category_of``, i.e. the pooled defect IoU.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        include_background: bool = False,
        threshold: float = 0.5,
        category_of: Callable[[str], str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.include_background = include_background
        self.threshold = threshold
        self.category_of = category_of or defect_type_from_path
        # one row per image: (category id, tp, fp, tn, fn), id -1 for a normal image; summed per id
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.names: dict[int, str] = {}

    def _category_id(self, name: str) -> int:
        identifier = zlib.crc32(name.encode())  # the same on every rank, so DDP can merge the rows
        self.names[identifier] = name
        return identifier

    def update(self, preds: torch.Tensor, target: torch.Tensor, image_path: Sequence[str]) -> None:
        """Accumulate one batch: masks (or maps, binarised at ``threshold``) and the images' paths."""
        if preds.shape[0] != target.shape[0] or preds[0].numel() != target[0].numel():
            msg = f"CategoryIoU: prediction {tuple(preds.shape)} and target {tuple(target.shape)} differ in size."
            raise ValueError(msg)
        if len(image_path) != preds.shape[0]:
            msg = f"CategoryIoU: {len(image_path)} image paths for a batch of {preds.shape[0]} masks."
            raise ValueError(msg)
        pred = (preds if preds.dtype == torch.bool else preds > self.threshold).reshape(preds.shape[0], -1)
        true = (target if target.dtype == torch.bool else target > 0.5).reshape(target.shape[0], -1)
        # per-image (tp, fp, tn, fn); counted here because torchmetrics' binary_stat_scores squeezes a batch
        # of one image to a vector and then fails on its sample axis
        counts = torch.stack(
            [(pred & true).sum(1), (pred & ~true).sum(1), (~pred & ~true).sum(1), (~pred & true).sum(1)], 1
        )
        # a normal image is a row of no category (-1), so no rank's list stays empty
        ids = [self._category_id(self.category_of(path)) if true[i].any() else -1 for i, path in enumerate(image_path)]
        ids_column = torch.tensor(ids, dtype=torch.int64, device=counts.device).unsqueeze(1)
        self.rows.append(torch.cat([ids_column, counts[:, :4].to(torch.int64)], dim=1))

    def per_category(self) -> dict[str, float]:
        """IoU of every defect type seen, and of the background (key ``"background"``)."""
        # a list of row blocks while accumulating, one flat tensor once synchronised across ranks
        empty = isinstance(self.rows, list) and not self.rows
        rows = torch.zeros(0, 5, dtype=torch.int64) if empty else dim_zero_cat(self.rows).reshape(-1, 5).cpu()
        identifiers = sorted(set(rows[:, 0].tolist()) - {-1}, key=lambda key: self.names.get(key, str(key)))
        # classes: 0 background, 1..K the types, K + 1 the false positives of normal images (no type)
        unknown = len(identifiers) + 1
        confmat = torch.zeros(unknown + 1, unknown + 1, dtype=torch.int64)
        for category_id, tp, fp, tn, fn in rows.tolist():
            index = identifiers.index(category_id) + 1 if category_id >= 0 else unknown
            confmat[0, 0] += tn
            confmat[0, index] += fp
            confmat[index, 0] += fn
            confmat[index, index] += tp
        iou = _jaccard_from_confmat(confmat, zero_division=1.0).tolist()
        result = {self.names.get(key, str(key)): iou[index] for index, key in enumerate(identifiers, start=1)}
        result["background"] = iou[0]
        return result

    def compute(self) -> torch.Tensor:
        """Mean IoU over the defect types (and the background with ``include_background``)."""
        values = self.per_category()
        background = values.pop("background")
        if not values:
            msg = "CategoryIoU: no test image has a defect pixel, so there is no category to average."
            raise ValueError(msg)
        scores = [*values.values(), *([background] if self.include_background else [])]
        return torch.tensor(sum(scores) / len(scores), dtype=torch.float32)


class CategoryIoU(AnomalibMetric, _CategoryIoU):  # type: ignore[misc]
    """Anomalib wrapper of the mean IoU over defect types; fields ``("pred_mask", "gt_mask", "image_path")``.

    Named ``<prefix>CategoryIoU``; :meth:`per_category` gives each type's IoU. Use
    ``include_background=True`` (e.g. with ``prefix="pixel_bg_"``) for the mean with the background.

    Example:
        >>> import torch
        >>> from anomalib.data import ImageBatch
        >>> metric = CategoryIoU(prefix="pixel_")
        >>> masks = torch.zeros(2, 2, 2, dtype=torch.bool)
        >>> masks[:, 0, 0] = True
        >>> predicted = masks.clone()
        >>> predicted[1, 1, 1] = True  # one false positive on the second (crack) image
        >>> batch = ImageBatch(
        ...     image=torch.rand(2, 3, 2, 2),
        ...     pred_mask=predicted,
        ...     gt_mask=masks,
        ...     image_path=["MT_Blowhole/Imgs/a.jpg", "MT_Crack/Imgs/b.jpg"],
        ... )
        >>> metric.update(batch)
        >>> {name: round(iou, 4) for name, iou in metric.per_category().items()}
        {'blowhole': 1.0, 'crack': 0.5, 'background': 0.8333}
        >>> round(float(metric.compute()), 4)
        0.75
    """

    default_fields = ("pred_mask", "gt_mask", "image_path")


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
        everything = MetricFields(**collected)
        for metric in threshold_free_metrics("raw_", self.pixel_metrics, self.fpr_limit):
            metric.update(everything)  # the pixel metrics skip a test set without masks
            if metric.update_called:
                self.results[metric.name] = float(metric.compute())


class MetricFields:
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
