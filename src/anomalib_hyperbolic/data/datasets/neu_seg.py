"""NEU-Seg steel surface defect segmentation dataset.

Description:
    Grayscale 200 x 200 hot-rolled steel strip images (Northeastern University), every one of
    them defective, with pixel annotations holding class ids: 0 background, 1 inclusion,
    2 patch, 3 scratch. The HADNet paper describes 300 images per class and trains in a
    supervised way on an 8:1:1 train/val/test split.

Source and licence:
    https://github.com/DHW-Master/NEU_Seg (cited by HADNet as github.com/donghongwen/NEU_Seg).
    Derived from the NEU surface defect database of K. Song and Y. Yan; no licence file is
    stated in the repository (use for research, cite the authors).

Layout::

    root/images/training/000001.jpg
    root/images/test/000002.jpg
    root/annotations/training/000001.png   (uint8 class ids, same stem as the image)
    root/annotations/test/000002.png

Mapping to anomalib:
    Every sample is anomalous (``label_index`` 1) including the training ones, with the binary
    union of the selected classes as ``gt_mask``; ``label`` names the classes present
    (``"patch"``, or ``"inclusion+scratch"`` when several). This is a supervised segmentation
    set: image-level metrics are undefined (one class only), pixel metrics are meaningful.
    ``category`` (``"inclusion"``, ``"patch"`` or ``"scratch"``) keeps only the images showing
    that class and its pixels as the mask, for per-class IoU; :meth:`NEUSegDataset.class_mask`
    returns the full class-id map of a sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anomalib.data.utils import LabelName, Split
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Mask

from anomalib_hyperbolic.data.datasets.base import (
    SurfaceDefectDataset,
    UnreadableImageError,
    filter_split,
    open_checked,
    pair_by_stem,
    split_by_ratios,
)

__all__ = ["CLASS_IDS", "CLASS_NAMES", "NEUSegDataset", "make_neu_seg_dataset", "read_class_ids"]

#: Annotation value -> class name.
CLASS_NAMES = {1: "inclusion", 2: "patch", 3: "scratch"}
CLASS_IDS = {name: value for value, name in CLASS_NAMES.items()}
FOLDERS = {"training": "train", "test": "test"}
SPLIT_MODES = ("official", "ratio")
_EXPECTED = "images/{training,test}/*.jpg with same-stem annotations/{training,test}/*.png (class ids 0-3)"


def read_class_ids(path: str | Path) -> np.ndarray:
    """The ``uint8`` class-id array of an annotation file (palette indices or gray values, not colours)."""
    with open_checked(path, "annotation") as image:
        if image.mode not in {"P", "L", "I", "I;16"}:
            msg = f"Annotation '{path}' has mode {image.mode}; expected a single-channel class-id PNG (mode P or L)."
            raise UnreadableImageError(msg)
        array = np.asarray(image)
    if array.size and array.max() > max(CLASS_NAMES):
        msg = f"Annotation '{path}' holds value {int(array.max())}; NEU-Seg class ids are 0-{max(CLASS_NAMES)}."
        raise ValueError(msg)
    return array.astype(np.uint8)


def _scan(root: Path, folder: str) -> list[tuple[str, str]]:
    images_dir, masks_dir = root / "images" / folder, root / "annotations" / folder
    for directory in (images_dir, masks_dir):
        if not directory.is_dir():
            msg = f"NEU-Seg folder '{directory}' is missing; expected under '{root}': {_EXPECTED}."
            raise FileNotFoundError(msg)
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"}}
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
    if not images:
        msg = f"No images in '{images_dir}'; expected {_EXPECTED}."
        raise FileNotFoundError(msg)
    return pair_by_stem(
        images,
        masks,
        heading="NEU-Seg image/annotation mismatch",
        image_without_mask=f"image(s) without an annotation in '{masks_dir}'",
        mask_without_image=f"annotation(s) without an image in '{images_dir}'",
    )


def make_neu_seg_dataset(
    root: str | Path,
    split: str | Split | None = None,
    split_mode: str = "official",
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    category: str | None = None,
) -> pd.DataFrame:
    """Samples DataFrame of a NEU-Seg folder.

    Args:
        root: Folder holding ``images/`` and ``annotations/``.
        split: ``train``, ``val``, ``test`` or ``None`` for all rows.
        split_mode: ``"official"``: ``training`` -> train, ``test`` -> test (no val split);
            ``"ratio"``: both folders pooled and shuffled into train/val/test by ``split_ratios``
            within each class combination (HADNet's 8:1:1).
        split_ratios: train/val/test fractions for ``split_mode="ratio"``.
        split_seed: Seed of the shuffle.
        category: One class name to keep only images showing it (``None`` = all three).

    Returns:
        Columns ``path, split, label, label_index, image_path, mask_path, classes, source_split``;
        ``attrs["task"] == "segmentation"``.
    """
    root = Path(root)
    if split_mode not in SPLIT_MODES:
        msg = f"split_mode must be one of {SPLIT_MODES}, got {split_mode!r}."
        raise ValueError(msg)
    if category is not None and category not in CLASS_IDS:
        msg = f"category must be None or one of {sorted(CLASS_IDS)}, got {category!r}."
        raise ValueError(msg)
    if not root.is_dir():
        msg = f"NEU-Seg root '{root}' does not exist or is not a folder; expected {_EXPECTED}."
        raise FileNotFoundError(msg)
    rows = []
    for folder, split_name in FOLDERS.items():
        for image_path, mask_path in _scan(root, folder):
            present = [CLASS_NAMES[int(v)] for v in np.unique(read_class_ids(mask_path)) if int(v) in CLASS_NAMES]
            label = "+".join(present) if present else "unannotated"
            rows.append((image_path, mask_path, label, ",".join(present), split_name, folder))
    samples = pd.DataFrame(rows, columns=["image_path", "mask_path", "label", "classes", "split", "source_split"])
    samples.insert(0, "path", str(root))
    samples["label_index"] = int(LabelName.ABNORMAL)
    if category is not None:
        samples = samples[samples.classes.str.split(",").apply(lambda names: category in names)]
        if samples.empty:
            msg = f"No NEU-Seg annotation under '{root}' contains class {category!r}."
            raise ValueError(msg)
    if split_mode == "ratio":
        samples = split_by_ratios(samples.reset_index(drop=True), split_ratios, split_seed, stratify="label")
    columns = ["path", "split", "label", "label_index", "image_path", "mask_path", "classes", "source_split"]
    samples = samples[columns].sort_values("image_path", ignore_index=True)
    samples.attrs["task"] = "segmentation"
    return filter_split(samples, split)


class NEUSegDataset(SurfaceDefectDataset):
    """NEU-Seg dataset (one split): every sample defective, mask = selected class pixels.

    Args:
        root: Folder holding ``images/`` and ``annotations/``.
        augmentations: Transforms applied to image and mask.
        split: ``train``, ``val``, ``test`` or ``None``.
        category: One class name (its pixels form ``gt_mask``) or ``None`` for all classes.
        **kwargs: Passed to :func:`make_neu_seg_dataset`.
    """

    def __init__(
        self,
        root: str | Path = "./datasets/neu_seg",
        augmentations: Transform | None = None,
        split: str | Split | None = None,
        category: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self.root = Path(root)
        self.split = split
        self.category = category
        self.samples = make_neu_seg_dataset(self.root, split=split, category=category, **kwargs)

    @property
    def defect_class_ids(self) -> tuple[int, ...]:
        """Annotation values counted as defect pixels."""
        return (CLASS_IDS[self.category],) if self.category else tuple(CLASS_NAMES)

    def read_mask(self, path: str | Path) -> Mask:
        """Binary mask of the selected classes (class ids read without palette conversion)."""
        return Mask(torch.from_numpy(np.isin(read_class_ids(path), self.defect_class_ids).astype(np.uint8)))

    def class_mask(self, index: int) -> torch.Tensor:
        """Class-id map (``int64``, 0 background, 1-3 per :data:`CLASS_NAMES`) of sample ``index``, unaugmented."""
        return torch.from_numpy(read_class_ids(self.samples.iloc[index].mask_path).astype(np.int64))
