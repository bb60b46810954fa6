"""Shared pieces of this package's datasets: checked image reading, thresholded masks, seeded splits.

The datasets here follow anomalib's convention: a ``samples`` DataFrame with at least the columns
``image_path``, ``mask_path`` (``""`` when there is none), ``split`` (``train``/``val``/``test``),
``label`` (``good`` or the defect class) and ``label_index`` (0 normal, 1 anomalous), and
``samples.attrs["task"]`` set to ``segmentation`` or ``classification``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data.dataclasses import ImageItem
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.errors import MisMatchError
from anomalib.data.utils import LabelName
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import to_dtype, to_image
from torchvision.tv_tensors import Mask

__all__ = [
    "SPLIT_NAMES",
    "SurfaceDefectDataset",
    "UnreadableImageError",
    "filter_split",
    "is_deterministic",
    "move_anomalies_to_train",
    "open_checked",
    "pair_by_stem",
    "read_image_checked",
    "split_by_ratios",
    "split_normals",
    "validate_ratios",
]

SPLIT_NAMES = ("train", "val", "test")


class UnreadableImageError(OSError):
    """An image or mask file exists but cannot be decoded."""


def open_checked(path: str | Path, what: str) -> Image.Image:
    """Open and decode an image file, raising :class:`UnreadableImageError` that names it."""
    image = None
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        if image is not None:
            image.close()
        msg = f"Cannot read {what} file '{path}': {type(error).__name__}: {error}"
        raise UnreadableImageError(msg) from error
    return image


def read_image_checked(path: str | Path) -> torch.Tensor:
    """Read an image exactly as anomalib's ``read_image(path, as_tensor=True)``, naming unreadable files.

    The file is decoded once and converted to RGB (grayscale replicated to 3 channels), then to
    ``float32`` in ``[0, 1]``.
    """
    with open_checked(path, "image") as image:
        rgb = image.convert("RGB")
    return to_dtype(to_image(rgb), torch.float32, scale=True)


#: torchvision transforms whose output is a fixed function of their input
DETERMINISTIC_TRANSFORMS = (
    v2.Resize, v2.Normalize, v2.ToDtype, v2.CenterCrop, v2.Grayscale, v2.Identity, v2.ToImage, v2.ToPureTensor
)  # fmt: skip


def is_deterministic(transform: object) -> bool:
    """Whether ``transform`` (``None``, a ``v2.Compose`` or one v2 transform) maps each input to one output."""
    if transform is None:
        return True
    if isinstance(transform, v2.Compose):
        return all(is_deterministic(part) for part in transform.transforms)
    return isinstance(transform, DETERMINISTIC_TRANSFORMS)


class SurfaceDefectDataset(AnomalibDataset):
    """``AnomalibDataset`` that reads masks through :meth:`defect_pixels` and names unreadable files.

    anomalib's own ``__getitem__`` binarises masks with ``> 0``; the masks of Magnetic Tile are
    anti-aliased (values 0-255 along the borders) and NEU-Seg's hold class ids, so subclasses
    decide which pixel values are defects. Everything else (RGB reading, augmentations applied
    jointly to image and mask, ``ImageItem`` output) matches anomalib's base class.

    Items are kept in memory (up to :attr:`item_cache_megabytes`, 0 switches it off) while the
    augmentations are deterministic (:func:`is_deterministic`, e.g. the ``Resize`` that anomalib adds
    for the model): a long schedule then decodes and resizes each image once, not once an epoch
    (Magnetic Tile: about 4 ms an image on one core). The key holds the files, the label and the
    augmentations' ``repr``, so a changed transform is a miss; random augmentations are never cached.
    Each DataLoader worker process keeps its own copy.
    """

    #: memory for kept items; 0: read every item from disk each time
    item_cache_megabytes: float = 2048.0

    def defect_pixels(self, mask: np.ndarray) -> np.ndarray:
        """Boolean defect map of a grayscale mask array (default: any non-zero pixel, as anomalib)."""
        return mask > 0

    def read_mask(self, path: str | Path) -> Mask:
        """Binary ``uint8`` mask (1 = defect) of the file at ``path``."""
        with open_checked(path, "mask") as mask:
            array = np.asarray(mask.convert("L"))
        return Mask(to_image(self.defect_pixels(array).astype(np.uint8)).squeeze(0), dtype=torch.uint8)

    def __getitem__(self, index: int) -> ImageItem:
        """Image (3 x H x W float), binary mask for segmentation sets, label and paths of one sample."""
        sample = self.samples.iloc[index]
        if not self.item_cache_megabytes or not is_deterministic(self.augmentations):
            return self.read_item(sample)
        key = (sample.image_path, sample.mask_path, int(sample.label_index), str(self.task), repr(self.augmentations))
        cache: dict[tuple, ImageItem] = self.__dict__.setdefault("_kept_items", {})
        item = cache.get(key)
        if item is None:
            item = self.read_item(sample)
            size = sum(t.numel() * t.element_size() for t in (item.image, item.gt_mask) if t is not None)
            kept = self.__dict__.get("_kept_bytes", 0)
            if kept + size <= self.item_cache_megabytes * 2**20:
                cache[key] = item
                self.__dict__["_kept_bytes"] = kept + size
        return copy.copy(item)  # a new item around the kept tensors (collation copies them)

    def read_item(self, sample: pd.Series) -> ImageItem:
        """One sample's item, read from disk and augmented."""
        image_path, mask_path, label_index = sample.image_path, sample.mask_path, int(sample.label_index)
        image = read_image_checked(image_path)
        task = self.task
        gt_mask = None
        if task == TaskType.SEGMENTATION:
            if label_index == LabelName.ABNORMAL:
                gt_mask = self.read_mask(mask_path)
                if gt_mask.shape != image.shape[-2:]:
                    msg = (
                        f"Mask '{mask_path}' is {tuple(gt_mask.shape)} but image '{image_path}' is "
                        f"{tuple(image.shape[-2:])} (height, width); they must match."
                    )
                    raise ValueError(msg)
            elif label_index == LabelName.NORMAL:
                gt_mask = Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        if self.augmentations:
            if task == TaskType.SEGMENTATION:
                temp_mask = gt_mask if gt_mask is not None else Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
                image, augmented = self.augmentations(image, temp_mask)
                if gt_mask is not None:
                    gt_mask = augmented
            else:
                image = self.augmentations(image)
        gt_label = None if label_index == LabelName.UNKNOWN else torch.tensor(label_index)
        return ImageItem(image=image, gt_mask=gt_mask, gt_label=gt_label, image_path=image_path, mask_path=mask_path)


def pair_by_stem(
    images: dict[str, Path],
    masks: dict[str, Path],
    *,
    heading: str,
    image_without_mask: str,
    mask_without_image: str,
) -> list[tuple[str, str]]:
    """``(image_path, mask_path)`` pairs of same-stem files, sorted by stem.

    Raises ``MisMatchError`` (``heading: ...``) listing up to five images without a mask (described by
    ``image_without_mask``) and masks without an image (``mask_without_image``).
    """
    without_mask = sorted(str(images[stem]) for stem in images.keys() - masks.keys())
    without_image = sorted(str(masks[stem]) for stem in masks.keys() - images.keys())
    if without_mask or without_image:
        parts = []
        if without_mask:
            parts.append(f"{len(without_mask)} {image_without_mask}: {without_mask[:5]}")
        if without_image:
            parts.append(f"{len(without_image)} {mask_without_image}: {without_image[:5]}")
        msg = f"{heading}: " + "; ".join(parts)
        raise MisMatchError(msg)
    return [(str(images[stem]), str(masks[stem])) for stem in sorted(images)]


def validate_ratios(ratios: Sequence[float], name: str, count: int) -> tuple[float, ...]:
    """Check that ``ratios`` has ``count`` positive entries summing to 1."""
    values = tuple(float(r) for r in ratios)
    if len(values) != count or any(r < 0 for r in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        msg = f"{name} must be {count} non-negative fractions summing to 1, got {list(ratios)}."
        raise ValueError(msg)
    return values


def _counts(total: int, ratios: Sequence[float]) -> list[int]:
    """Split ``total`` into ``len(ratios)`` integer parts: leading parts rounded half up, the remainder last."""
    counts: list[int] = []
    for ratio in ratios[:-1]:
        counts.append(min(math.floor(total * ratio + 0.5), total - sum(counts)))
    counts.append(total - sum(counts))
    return counts


def split_normals(samples: pd.DataFrame, train_ratio: float, seed: int) -> pd.DataFrame:
    """Assign ``train``/``test`` to the normal rows (``label_index == 0``) by a seeded shuffle.

    ``round(n * train_ratio)`` normals go to train, the rest to test; anomalous rows go to test.
    The shuffle runs over the rows sorted by ``image_path``, so the split depends only on the
    file names and the seed.
    """
    if not 0.0 < train_ratio <= 1.0:
        msg = f"train_split_ratio must be in (0, 1], got {train_ratio}."
        raise ValueError(msg)
    samples = samples.sort_values("image_path", ignore_index=True)
    samples["split"] = "test"
    normal = samples.index[samples.label_index == LabelName.NORMAL].to_numpy()
    order = np.random.default_rng(seed).permutation(len(normal))
    n_train = _counts(len(normal), (train_ratio, 1.0 - train_ratio))[0]
    samples.loc[normal[order[:n_train]], "split"] = "train"
    return samples


def split_by_ratios(samples: pd.DataFrame, ratios: Sequence[float], seed: int, stratify: str = "label") -> pd.DataFrame:
    """Assign ``train``/``val``/``test`` to all rows by seeded shuffles within each ``stratify`` group."""
    ratios = validate_ratios(ratios, "split_ratios", 3)
    samples = samples.sort_values("image_path", ignore_index=True)
    samples["split"] = "test"
    rng = np.random.default_rng(seed)
    for _, group in sorted(samples.groupby(stratify, sort=True), key=lambda item: str(item[0])):
        index = group.index.to_numpy()[rng.permutation(len(group))]
        n_train, n_val, _ = _counts(len(index), ratios)
        samples.loc[index[:n_train], "split"] = "train"
        samples.loc[index[n_train : n_train + n_val], "split"] = "val"
    return samples


def move_anomalies_to_train(
    samples: pd.DataFrame,
    count: int,
    seed: int,
    seen_anomaly_type: str | None = None,
) -> pd.DataFrame:
    """Move ``count`` labelled anomalies from test to train, as in DRA's protocols.

    General setting (``seen_anomaly_type=None``): the anomalies are drawn from all test anomalies
    and removed from the test set. Hard setting: they are drawn from the one class
    ``seen_anomaly_type`` and every other anomaly of that class is dropped, so the test set holds
    unseen classes only.
    """
    if count < 0:
        msg = f"train_anomalies must be >= 0, got {count}."
        raise ValueError(msg)
    test_anomalies = samples[(samples.split == "test") & (samples.label_index == LabelName.ABNORMAL)]
    if seen_anomaly_type is not None:
        classes = sorted(test_anomalies.label.unique())
        if seen_anomaly_type not in classes:
            msg = f"seen_anomaly_type must be one of the test anomaly classes {classes}, got {seen_anomaly_type!r}."
            raise ValueError(msg)
        test_anomalies = test_anomalies[test_anomalies.label == seen_anomaly_type]
    if count == 0 and seen_anomaly_type is None:
        return samples
    if count > len(test_anomalies):
        msg = f"train_anomalies={count} but only {len(test_anomalies)} anomalies are available to draw from."
        raise ValueError(msg)
    pool = test_anomalies.sort_values("image_path").index.to_numpy()
    chosen = pool[np.random.default_rng(seed).permutation(len(pool))[:count]]
    samples = samples.copy()
    samples.loc[chosen, "split"] = "train"
    if seen_anomaly_type is not None:
        samples = samples.drop(index=np.setdiff1d(pool, chosen))
    return samples.reset_index(drop=True)


def filter_split(samples: pd.DataFrame, split: str | None) -> pd.DataFrame:
    """Rows of one split (all rows for ``None``), keeping ``attrs``."""
    if split is None:
        return samples
    value = getattr(split, "value", split)
    if value not in SPLIT_NAMES:
        msg = f"split must be one of {SPLIT_NAMES} or None, got {split!r}."
        raise ValueError(msg)
    attrs = dict(samples.attrs)
    subset = samples[samples.split == value].reset_index(drop=True)
    subset.attrs.update(attrs)
    return subset
