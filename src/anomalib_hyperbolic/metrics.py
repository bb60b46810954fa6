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

import math
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

__all__ = [
    "CategoryIoU",
    "CategoryIoUThresholds",
    "LogitDiagnostics",
    "MIoU",
    "MetricFields",
    "RawScoreMetrics",
    "TrainingStepTimer",
    "category_iou_curve",
    "evenly_spaced_order_statistics",
    "raw_pixel_threshold",
    "threshold_free_metrics",
]


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
    (FPR limit ``fpr_limit``, as anomalib's AUPRO); :attr:`images` counts the test images seen.

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
        self.images = 0

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start from nothing collected."""
        del trainer, pl_module
        self.collected, self.results, self.images = {}, {}, 0

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Keep CPU copies of the batch's raw scores, maps and ground truth."""
        del trainer, pl_module, args, kwargs
        self.images += int(outputs.batch_size)
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


# ------------------------------------------------------------------------------ thresholds of the per-type IoU
def raw_pixel_threshold(post_processor: Any) -> float | None:
    """The raw anomaly-map value above which anomalib's ``PostProcessor`` marks a pixel anomalous.

    The post-processor min-max normalises a map around its validation-fitted (F1-adaptive) pixel
    threshold ``t``, ``n = (raw - t) / (max - min) + 0.5`` (clamped to ``[0, 1]``), and sets
    ``pred_mask = n > 1 - pixel_sensitivity``; in raw units that is ``raw > t + (0.5 - sensitivity)
    (max - min)``, ``raw > t`` at the default sensitivity 0.5. Without normalisation (or before any
    validation) the map is compared with ``1 - pixel_sensitivity`` as it is. ``None`` for another
    post-processor or one that does not threshold.
    """
    from anomalib.post_processing import PostProcessor

    if not isinstance(post_processor, PostProcessor) or not post_processor.enable_thresholding:
        return None
    normalized = float(post_processor.normalized_pixel_threshold)
    low, high = float(post_processor.pixel_min), float(post_processor.pixel_max)
    if not post_processor.enable_normalization or math.isnan(low) or math.isnan(high):
        return normalized
    threshold = float(post_processor.pixel_threshold)
    if math.isnan(threshold):  # what the post-processor's normalisation then uses
        threshold = (low + high) / 2
    return threshold if high == low else threshold + (normalized - 0.5) * (high - low)


def category_iou_curve(
    maps: torch.Tensor, masks: torch.Tensor, categories: Sequence[str | None], thresholds: torch.Tensor
) -> torch.Tensor:
    """Mean IoU over defect types (eqs. 14-15, as :class:`CategoryIoU` computes it) of ``maps > t`` for every ``t``.

    The counts :class:`CategoryIoU` accumulates, for all thresholds at once: per defect type, the
    scores of its images' defect pixels and of their background pixels are sorted, and the counts
    above each threshold found by binary search. ``IoU_n = TP / (TP + FP + FN)`` over the images of
    type ``n`` (1 for an empty union); normal images (``None`` category) only lower the background
    IoU, which this mean leaves out (``include_background=False``).

    Args:
        maps: ``(N, ...)`` anomaly maps of ``N`` images.
        masks: ``(N, ...)`` ground-truth masks with the same number of pixels per image.
        categories: Each image's defect type, ``None`` for a normal image (an empty mask).
        thresholds: ``(T,)`` thresholds, compared in the maps' dtype.

    Returns:
        ``(T,)`` float64 mean IoU over the types.

    Raises:
        ValueError: no image has a defect type.
    """
    maps = maps.reshape(len(maps), -1)
    masks = masks.reshape(len(masks), -1) > 0.5
    thresholds = thresholds.to(maps.dtype).cpu()
    names = sorted({name for name in categories if name is not None})
    if not names:
        msg = "category_iou_curve: no image has a defect type, so there is no category to average."
        raise ValueError(msg)
    total = torch.zeros(len(thresholds), dtype=torch.float64)
    for name in names:
        rows = torch.tensor([category == name for category in categories])
        scores, truth = maps[rows].flatten().cpu(), masks[rows].flatten().cpu()
        above = []
        for values in (scores[truth], scores[~truth]):  # defect pixels, then background pixels
            ordered = values.sort().values
            above.append(len(ordered) - torch.searchsorted(ordered, thresholds, right=True).to(torch.float64))
        true_positives, false_positives = above
        union = float(truth.sum()) + false_positives  # TP + FN + FP
        iou = torch.where(union > 0, true_positives / union.clamp_min(1), torch.ones_like(union))
        total += iou
    return total / len(names)


def evenly_spaced_order_statistics(sorted_values: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly spaced order statistics of a sorted 1-D tensor, its first and last included.

    The positions are computed in float64: float32 cannot represent every index above 2^24, and a map
    set of a few hundred 256 px images has tens of millions of pixels (float32 rounded the last position
    one past the end).
    """
    last = len(sorted_values) - 1
    positions = torch.linspace(0, last, count, dtype=torch.float64).round().long().clamp_(0, last)
    return sorted_values[positions]


class CategoryIoUThresholds(Callback):
    """Test mean IoU over defect types (eqs. 14-15) of the raw anomaly maps at three thresholds.

    Passed to the :class:`~anomalib.engine.Engine` as a trainer callback, it collects the maps
    before the post-processor (as :class:`RawScoreMetrics`) and, at the end of the test epoch, fills
    :attr:`results` with the :class:`CategoryIoU` of ``map > t`` for

    * the **validation-fitted** threshold that anomalib's post-processor applies
      (:func:`raw_pixel_threshold`): ``pixel_CategoryIoU_val_threshold`` (the figure
      ``pixel_CategoryIoU`` reports, recomputed from the raw maps) and ``pixel_threshold_val``;
    * an **oracle** threshold, the one that maximises the mean per-type IoU on the evaluated images
      themselves (searched over ``candidates`` quantiles of their scores, the two other thresholds
      included, see :func:`category_iou_curve`): ``pixel_CategoryIoU_oracle`` and
      ``pixel_threshold_oracle``. A diagnostic, never a result: it is fitted on the images it scores.
      The gap to the validation threshold's IoU is the thresholding failure; a low oracle IoU is a
      learning failure;
    * with ``probability_threshold`` (for maps that are probabilities, e.g. sigmoid outputs), that
      fixed value: ``pixel_CategoryIoU_at_<value>`` (``_at_0.5``).

    ``pixel_CategoryIoU_per_type`` holds each type's IoU (and the background's) at each of them.
    Batches without masks or image paths are skipped; nothing is reported without a defect image.
    Under DDP each process sees its own share of the images.

    Args:
        probability_threshold: Fixed threshold on the raw map; ``None``: not reported.
        category_of: Defect type of an image path (default
            :func:`~anomalib_hyperbolic.data.defect_type_from_path`).
        candidates: Quantiles of the defect images' scores (and as many of their defect pixels')
            tried as oracle thresholds.
    """

    def __init__(
        self,
        probability_threshold: float | None = None,
        category_of: Callable[[str], str] | None = None,
        candidates: int = 1024,
    ) -> None:
        super().__init__()
        self.probability_threshold = probability_threshold
        self.category_of = category_of or defect_type_from_path
        self.candidates = candidates
        self.maps: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.paths: list[str] = []
        self.results: dict[str, Any] = {}

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start from nothing collected."""
        del trainer, pl_module
        self.maps, self.masks, self.paths, self.results = [], [], [], {}

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Keep CPU copies of the batch's raw maps, masks and image paths."""
        del trainer, pl_module, args, kwargs
        anomaly_map, gt_mask = getattr(outputs, "anomaly_map", None), getattr(outputs, "gt_mask", None)
        paths = getattr(outputs, "image_path", None)
        if anomaly_map is None or gt_mask is None or paths is None:
            return
        size = len(anomaly_map)
        if len(gt_mask) != size or anomaly_map[0].numel() != gt_mask[0].numel():
            msg = f"CategoryIoUThresholds: maps {tuple(anomaly_map.shape)} and masks {tuple(gt_mask.shape)} differ."
            raise ValueError(msg)
        self.maps.append(anomaly_map.detach().reshape(size, -1).float().cpu().clone())
        self.masks.append(gt_mask.detach().reshape(size, -1).cpu() > 0.5)
        self.paths.extend(str(path) for path in paths)

    def _category_iou(self, maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> tuple[float, dict]:
        metric = _CategoryIoU(threshold=threshold, category_of=self.category_of, sync_on_compute=False)
        metric.update(maps, masks, self.paths)
        return float(metric.compute()), metric.per_category()

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fit the oracle threshold and compute the three IoUs into :attr:`results`."""
        del trainer
        if not self.maps:
            return
        maps, masks = torch.cat(self.maps), torch.cat(self.masks)
        defect = masks.any(dim=1)
        if not bool(defect.any()):
            return
        paths = zip(self.paths, defect.tolist(), strict=True)
        categories = [self.category_of(path) if has else None for path, has in paths]
        named = {"val_threshold": raw_pixel_threshold(getattr(pl_module, "post_processor", None))}
        if self.probability_threshold is not None:
            named[f"at_{self.probability_threshold:g}"] = float(self.probability_threshold)
        scores = maps[defect].flatten().sort().values
        positives = maps[defect][masks[defect]].sort().values

        below_all = torch.nextafter(scores[:1], torch.tensor([-math.inf]))  # everything anomalous
        known = torch.tensor([value for value in named.values() if value is not None], dtype=maps.dtype)
        spread = [evenly_spaced_order_statistics(values, self.candidates) for values in (scores, positives)]
        candidates = torch.cat([*spread, below_all, known]).unique()
        curve = category_iou_curve(maps, masks, categories, candidates)
        named["oracle"] = float(candidates[int(curve.argmax())])
        per_type = {}
        for label, threshold in named.items():
            if threshold is None:
                continue
            mean, per_type[label] = self._category_iou(maps, masks, threshold)
            self.results[f"pixel_CategoryIoU_{label}"] = mean
        self.results["pixel_threshold_oracle"] = named["oracle"]
        if named["val_threshold"] is not None:
            self.results["pixel_threshold_val"] = named["val_threshold"]
        self.results["pixel_CategoryIoU_per_type"] = per_type


# ------------------------------------------------------------------------------ training diagnostics
class LogitDiagnostics(Metric):
    """Epoch diagnostics of a segmentation head's training logits: IoU at probability 0.5, three pixel groups.

    Observes only (``update`` on detached logits; no random draws). The pixels of a batch fall in three
    groups: ``defect`` (inside a mask), ``background`` (outside the mask of an image that has defect
    pixels) and ``normal`` (every pixel of an image whose mask is empty). Per group a histogram of the
    logits (``bins`` bins over ``[low, high]``, values outside in the end bins), the exact sum and the
    count of logits above 0 (probability above 0.5) are accumulated, summed over steps (and ranks).
    :meth:`compute` returns

    * ``iou_at_0.5``: the pooled defect IoU of ``logit > 0`` against the masks,
      ``TP / (TP + FP + FN)`` over the epoch (omitted when there is neither a defect nor a positive);
    * per group ``g``: ``pixels_<g>``, ``logit_<g>_mean`` (exact), ``logit_<g>_q05`` / ``_q50`` /
      ``_q95`` (from the histogram, to a bin's width, linearly inside the bin) and
      ``logit_<g>_above_0`` (share of the group's pixels with probability above 0.5); a group without
      pixels is omitted.

    Underfitting shows as defect logits that stay below 0 (low ``iou_at_0.5``, a low ``logit_defect_q50``);
    a thresholding problem as defect and background quantiles that separate but straddle another value.

    Example:
        >>> import torch
        >>> diagnostics = LogitDiagnostics()
        >>> logits = torch.tensor([[[[3.0, -3.0]]], [[[1.0, 1.0]]]])  # image 0: one defect pixel
        >>> masks = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])  # image 1: normal
        >>> diagnostics.update(logits, masks)
        >>> result = diagnostics.compute()
        >>> result["iou_at_0.5"], result["logit_defect_mean"], result["logit_normal_above_0"]
        (0.3333333333333333, 3.0, 1.0)
    """

    GROUPS = ("defect", "background", "normal")
    QUANTILES = (0.05, 0.5, 0.95)
    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, low: float = -20.0, high: float = 20.0, bins: int = 4000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not high > low or bins < 1:
            msg = f"LogitDiagnostics needs high > low and bins >= 1, got {low}, {high}, {bins}."
            raise ValueError(msg)
        self.low, self.high, self.bins = low, high, bins
        groups = len(self.GROUPS)
        self.add_state("histogram", torch.zeros(groups, bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sums", torch.zeros(groups, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("above", torch.zeros(groups, dtype=torch.int64), dist_reduce_fx="sum")

    @staticmethod
    def pixel_groups(masks: torch.Tensor) -> torch.Tensor:
        """Each pixel's group index, ``(B, ...)`` like ``masks``: 0 defect, 1 background of a defect image, 2 normal."""
        defect = masks > 0.5
        defect_image = defect.reshape(len(defect), -1).any(dim=1).view(-1, *([1] * (defect.ndim - 1)))
        return 2 - defect_image.long() - defect.long()  # a defect pixel lies in a defect image: 2 - 1 - 1

    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        """Accumulate one batch: logits and masks with the same number of pixels per image (``(B, 1, H, W)``)."""
        logits = logits.detach().float().reshape(len(logits), -1)
        defect = masks.detach().reshape(len(masks), -1).to(logits.device) > 0.5
        if defect.shape != logits.shape:
            msg = f"LogitDiagnostics: logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ in size."
            raise ValueError(msg)
        defect_image = defect.any(dim=1)
        width = (self.high - self.low) / self.bins
        index = ((logits - self.low) / width).floor().clamp(0, self.bins - 1).long()
        index += (2 - defect_image.long()).unsqueeze(1) * self.bins - defect.long() * self.bins  # + group * bins
        counts = torch.bincount(index.flatten(), minlength=len(self.GROUPS) * self.bins)
        self.histogram += counts.view(len(self.GROUPS), self.bins)
        # sums and counts above 0 per image, and over the defect pixels; the background is their difference
        positive = logits > 0
        image_sums, image_above = logits.sum(dim=1, dtype=torch.float64), positive.sum(dim=1)
        defect_sum = torch.where(defect, logits, torch.zeros_like(logits)).sum(dtype=torch.float64)
        defect_above = (positive & defect).sum()
        # masks by multiplication, not boolean indexing: no host-device synchronisation on a GPU
        in_defect_images = (image_sums * defect_image).sum(), (image_above * defect_image).sum()
        self.sums += torch.stack([defect_sum, in_defect_images[0] - defect_sum, image_sums.sum() - in_defect_images[0]])
        self.above += torch.stack(
            [defect_above, in_defect_images[1] - defect_above, image_above.sum() - in_defect_images[1]]
        )

    def _quantile(self, histogram: torch.Tensor, q: float) -> float:
        """The ``q`` quantile of a group's histogram, linear inside the bin that holds it."""
        cumulative = histogram.cumsum(0).double()
        rank = q * float(cumulative[-1])
        index = int(torch.searchsorted(cumulative, torch.tensor([rank], dtype=torch.float64)).clamp(max=self.bins - 1))
        before = float(cumulative[index - 1]) if index > 0 else 0.0
        inside = float(histogram[index])
        fraction = (rank - before) / inside if inside > 0 else 0.0
        width = (self.high - self.low) / self.bins
        return self.low + width * (index + fraction)

    def compute(self) -> dict[str, float]:
        """The epoch's figures (see the class docstring)."""
        histogram, sums, above = self.histogram.cpu(), self.sums.cpu(), self.above.cpu()
        pixels = histogram.sum(dim=1)
        result: dict[str, float] = {}
        true_positives = float(above[0])
        union = float(pixels[0]) + float(above[1]) + float(above[2])  # TP + FN + FP
        if union > 0:
            result["iou_at_0.5"] = true_positives / union
        for group, name in enumerate(self.GROUPS):
            count = int(pixels[group])
            if count == 0:
                continue
            result[f"pixels_{name}"] = float(count)
            result[f"logit_{name}_mean"] = float(sums[group]) / count
            for q in self.QUANTILES:
                result[f"logit_{name}_q{round(q * 100):02d}"] = self._quantile(histogram[group], q)
            result[f"logit_{name}_above_0"] = float(above[group]) / count
        return result
