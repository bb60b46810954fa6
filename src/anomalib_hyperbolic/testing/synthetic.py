"""Tiny MVTec-format datasets with textured normals and synthetic defects, for offline tests.

Layout written (the one anomalib's ``MVTecAD`` and ``Folder`` datamodules read)::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect>/000.png
    root/<category>/ground_truth/<defect>/000_mask.png

Normals are a smooth random texture (low-frequency noise plus a stripe pattern with a jittered
phase, so that normal images differ from each other); defects are bright or dark blobs and
scratches painted onto such a texture, with their binary masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DEFECT_TYPES", "defect_mask", "make_mvtec_like_dataset", "textured_image"]

DEFECT_TYPES = ("blob", "scratch")


def textured_image(rng: np.random.Generator, size: int, channels: int = 3) -> np.ndarray:
    """A smooth normal texture in ``[0, 1]``, shape ``(size, size, channels)``."""
    coarse = rng.random((size // 8 + 2, size // 8 + 2))
    image = np.array(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0
    yy, xx = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + 0.3 * yy) / max(size / 6, 2) + phase)
    base = 0.35 + 0.3 * image + 0.2 * stripes + rng.normal(0, 0.02, (size, size))
    tint = rng.uniform(0.9, 1.1, channels)
    return np.clip(base[..., None] * tint[None, None, :], 0, 1)


def defect_mask(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A boolean mask of one defect covering roughly 1-8 % of the image."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.integers(size // 5, size - size // 5, 2)
    if kind == "blob":
        radius = rng.uniform(0.08, 0.15) * size
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.3, 0.5) * size
    width = max(1.5, 0.03 * size)
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width)


def _save(image: np.ndarray, path: Path, grayscale: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if grayscale else pixels).save(path)


def make_mvtec_like_dataset(
    root: str | Path,
    category: str = "synthetic",
    n_train: int = 8,
    n_test_good: int = 4,
    n_test_defect: int = 4,
    image_size: int = 64,
    defect_types: tuple[str, ...] = DEFECT_TYPES,
    grayscale: bool = False,
    seed: int = 0,
) -> Path:
    """Write a miniature MVTec AD category and return ``root`` (pass it as ``MVTecAD(root=...)``).

    Args:
        root: Folder to write into (created).
        category: Category folder name.
        n_train: Normal training images.
        n_test_good: Normal test images.
        n_test_defect: Defective test images per defect type.
        image_size: Square image side in pixels.
        defect_types: Subset of :data:`DEFECT_TYPES`.
        grayscale: Write single-channel images (as Magnetic Tile or ELPV are).
        seed: Random seed; the same arguments give byte-identical files.
    """
    unknown = set(defect_types) - set(DEFECT_TYPES)
    if unknown:
        msg = f"Unknown defect types {sorted(unknown)}; choose from {DEFECT_TYPES}."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    base = Path(root) / category
    for split, count in (("train", n_train), ("test", n_test_good)):
        for index in range(count):
            _save(textured_image(rng, image_size), base / split / "good" / f"{index:03d}.png", grayscale)
    for kind in defect_types:
        for index in range(n_test_defect):
            image = textured_image(rng, image_size)
            mask = defect_mask(rng, image_size, kind)
            value = rng.choice([0.05, 0.95])
            image[mask] = value + rng.normal(0, 0.02, (int(mask.sum()), image.shape[-1]))
            _save(image, base / "test" / kind / f"{index:03d}.png", grayscale)
            mask_path = base / "ground_truth" / kind / f"{index:03d}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((mask * 255).astype(np.uint8)).save(mask_path)
    return Path(root)
