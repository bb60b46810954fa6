"""Magnetic Tile (MT-Defect) dataset.

Description:
    1,344 grayscale crops of magnetic tile surfaces of varied sizes (roughly 100-600 px a side):
    952 defect-free (``MT_Free``) and 392 defective in five classes (``MT_Blowhole`` 115,
    ``MT_Break`` 85, ``MT_Crack`` 57, ``MT_Fray`` 32, ``MT_Uneven`` 103), each ``.jpg`` with a
    same-stem ``.png`` pixel mask (anti-aliased, so a pixel is a defect when its value > 127).

Source and licence:
    https://github.com/abin24/Magnetic-tile-defect-datasets. (note the trailing dot). The
    authors ask users to cite the paper; the repository states no licence.

Reference:
    Huang, Y., Qiu, C. & Yuan, K. "Surface defect saliency of magnetic tile."
    The Visual Computer 36, 85-96 (2020).

Layout::

    root/MT_Free/Imgs/exp0_num_743.jpg
    root/MT_Free/Imgs/exp0_num_743.png        (all zero)
    root/MT_Crack/Imgs/exp1_num_3191.jpg
    root/MT_Crack/Imgs/exp1_num_3191.png
    ...

Splits (``split_mode``):
    ``"one_class"`` (default, anomaly-detection protocol): a seeded ``train_split_ratio`` (0.8)
    of the normals is the training set; the other normals and every defect are the test set,
    with the defect class as ``label``. ``"ratio"`` (supervised protocol, HADNet's 8:1:1): all
    images are shuffled into train/val/test by ``split_ratios`` within each class, so the
    training split contains labelled defects with masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anomalib.data.utils import LabelName, Split
from torchvision.transforms.v2 import Transform

from anomalib_hyperbolic.data.datasets.base import (
    SurfaceDefectDataset,
    filter_split,
    move_anomalies_to_train,
    pair_by_stem,
    split_by_ratios,
    split_normals,
)

__all__ = ["DEFECT_TYPES", "NORMAL_FOLDER", "MagneticTileDataset", "make_magnetic_tile_dataset"]

#: Defect classes (labels) in the order of the original repository; folder ``MT_<Capitalised>``.
DEFECT_TYPES = ("blowhole", "break", "crack", "fray", "uneven")
NORMAL_FOLDER = "MT_Free"
SPLIT_MODES = ("one_class", "ratio")


def _folder(defect_type: str) -> str:
    return f"MT_{defect_type.capitalize()}"


def _expected_layout(defect_types: Sequence[str]) -> str:
    folders = ", ".join([NORMAL_FOLDER, *(_folder(d) for d in defect_types)])
    return f"folders {folders}, each with Imgs/*.jpg images and same-stem Imgs/*.png masks"


def _scan_folder(root: Path, folder: str, defect_types: Sequence[str]) -> list[tuple[str, str]]:
    """``(image_path, mask_path)`` pairs of ``root/folder/Imgs``, checking the pairing."""
    directory = root / folder / "Imgs"
    if not directory.is_dir():
        msg = f"Magnetic Tile folder '{directory}' is missing; expected in '{root}': {_expected_layout(defect_types)}."
        raise FileNotFoundError(msg)
    images = {p.stem: p for p in directory.iterdir() if p.suffix.lower() == ".jpg"}
    masks = {p.stem: p for p in directory.iterdir() if p.suffix.lower() == ".png"}
    if not images:
        msg = f"No .jpg images in '{directory}'; expected {_expected_layout(defect_types)}."
        raise FileNotFoundError(msg)
    return pair_by_stem(
        images,
        masks,
        heading=f"Image/mask mismatch in '{directory}'",
        image_without_mask="image(s) without a same-stem .png mask",
        mask_without_image="mask(s) without a same-stem .jpg image",
    )


def make_magnetic_tile_dataset(
    root: str | Path,
    split: str | Split | None = None,
    train_split_ratio: float = 0.8,
    split_seed: int = 0,
    defect_types: Sequence[str] = DEFECT_TYPES,
    split_mode: str = "one_class",
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    train_anomalies: int = 0,
    seen_anomaly_type: str | None = None,
) -> pd.DataFrame:
    """Samples DataFrame of a Magnetic Tile folder.

    Args:
        root: Folder holding ``MT_Free`` and the ``MT_<Defect>`` folders.
        split: ``train``, ``val``, ``test`` or ``None`` for all rows.
        train_split_ratio: Fraction of normals used for training (``split_mode="one_class"``).
        split_seed: Seed of the shuffles (independent of the training seed).
        defect_types: Defect classes to include (subset of :data:`DEFECT_TYPES`).
        split_mode: ``"one_class"`` or ``"ratio"`` (see the module docstring).
        split_ratios: train/val/test fractions for ``split_mode="ratio"``.
        train_anomalies: Labelled defects moved from test to train (DRA's protocols).
        seen_anomaly_type: With ``train_anomalies``: draw them from this class only and drop the
            rest of it (DRA's hard setting).

    Returns:
        Columns ``path, split, label, label_index, image_path, mask_path``; ``label`` is ``good``
        or the defect class; normals have ``mask_path == ""``; ``attrs["task"] == "segmentation"``.
    """
    root = Path(root)
    defect_types = tuple(defect_types)
    unknown = sorted(set(defect_types) - set(DEFECT_TYPES))
    if unknown or not defect_types:
        msg = f"defect_types must be a non-empty subset of {DEFECT_TYPES}, got {list(defect_types)}."
        raise ValueError(msg)
    if split_mode not in SPLIT_MODES:
        msg = f"split_mode must be one of {SPLIT_MODES}, got {split_mode!r}."
        raise ValueError(msg)
    if not root.is_dir():
        msg = (
            f"Magnetic Tile root '{root}' does not exist or is not a folder; expected "
            f"{_expected_layout(defect_types)} (MagneticTile.prepare_data() downloads it)."
        )
        raise FileNotFoundError(msg)

    rows = [(image, "", "good", int(LabelName.NORMAL)) for image, _ in _scan_folder(root, NORMAL_FOLDER, defect_types)]
    for defect in defect_types:
        pairs = _scan_folder(root, _folder(defect), defect_types)
        rows += [(image, mask, defect, int(LabelName.ABNORMAL)) for image, mask in pairs]
    samples = pd.DataFrame(rows, columns=["image_path", "mask_path", "label", "label_index"])
    samples.insert(0, "path", str(root))

    if split_mode == "one_class":
        samples = split_normals(samples, train_split_ratio, split_seed)
    else:
        samples = split_by_ratios(samples, split_ratios, split_seed, stratify="label")
    samples = move_anomalies_to_train(samples, train_anomalies, split_seed, seen_anomaly_type)
    samples = samples[["path", "split", "label", "label_index", "image_path", "mask_path"]]
    samples.attrs["task"] = "segmentation"
    return filter_split(samples, split)


class MagneticTileDataset(SurfaceDefectDataset):
    """Magnetic Tile dataset (one split); masks are thresholded at ``mask_threshold``.

    Args:
        root: Folder holding ``MT_Free`` and the ``MT_<Defect>`` folders.
        augmentations: Transforms applied to image and mask.
        split: ``train``, ``val``, ``test`` or ``None``.
        mask_threshold: A mask pixel is a defect when its value is greater than this (0-255).
        **kwargs: Passed to :func:`make_magnetic_tile_dataset`.

    Example:
        >>> dataset = MagneticTileDataset(root="./datasets/magnetic_tile", split="test")
        >>> item = dataset[0]
        >>> item.image.shape[0]  # grayscale files are read as RGB
        3
    """

    def __init__(
        self,
        root: str | Path = "./datasets/magnetic_tile",
        augmentations: Transform | None = None,
        split: str | Split | None = None,
        mask_threshold: int = 127,
        **kwargs: object,
    ) -> None:
        super().__init__(augmentations=augmentations)
        if not 0 <= mask_threshold < 255:
            msg = f"mask_threshold must be in [0, 255), got {mask_threshold}."
            raise ValueError(msg)
        self.root = Path(root)
        self.split = split
        self.mask_threshold = mask_threshold
        self.samples = make_magnetic_tile_dataset(self.root, split=split, **kwargs)

    def defect_pixels(self, mask: np.ndarray) -> np.ndarray:
        """Defect where the anti-aliased mask is brighter than ``mask_threshold``."""
        return mask > self.mask_threshold
