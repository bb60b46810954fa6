"""Miniature copies of the Magnetic Tile, NEU-Seg and ELPV layouts, for offline tests.

Each writer produces the exact on-disk layout the matching datamodule reads
(:class:`~anomalib_hyperbolic.data.MagneticTile`, :class:`~anomalib_hyperbolic.data.NEUSeg`,
:class:`~anomalib_hyperbolic.data.ELPV`) with grayscale textures and painted defects, so that a
model can actually separate normal from defective images. Same arguments, same files.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_hyperbolic.testing.synthetic import defect_mask, textured_image

__all__ = ["make_elpv_like", "make_magnetic_tile_like", "make_magnetic_tile_subset", "make_neu_seg_like"]

MT_DEFECT_TYPES = ("blowhole", "break", "crack", "fray", "uneven")


def _gray(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    side = max(height, width)
    return textured_image(rng, side, channels=1)[:height, :width, 0]


def _paint(rng: np.random.Generator, image: np.ndarray, kind: str) -> np.ndarray:
    """Paint a dark or bright defect on ``image`` (in place); return its boolean mask."""
    height, width = image.shape
    side = min(height, width)
    mask = defect_mask(rng, side, kind)
    full = np.zeros_like(image, dtype=bool)
    full[:side, :side] = mask
    image[full] = rng.choice([0.05, 0.95]) + rng.normal(0, 0.02, int(full.sum()))
    return full


def _save_gray(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L").save(path, quality=95)


def _save_mask(mask: np.ndarray, path: Path, antialias: bool = True) -> None:
    """Binary mask as 0/255 PNG; with ``antialias`` a 1-px border of value 100 (below 127) mimics MT's masks."""
    values = mask.astype(np.uint8) * 255
    if antialias and mask.any():
        grown = np.zeros_like(mask)
        grown[1:, :] |= mask[:-1, :]
        grown[:-1, :] |= mask[1:, :]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        values[grown & ~mask] = 100
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values, mode="L").save(path)


def make_magnetic_tile_like(
    root: str | Path,
    n_normal: int = 10,
    n_per_defect: int = 2,
    defect_types: Sequence[str] = MT_DEFECT_TYPES,
    min_size: int = 48,
    max_size: int = 80,
    seed: int = 0,
) -> Path:
    """Write a miniature Magnetic Tile copy (``MT_Free`` + ``MT_<Defect>``, grayscale, varied sizes).

    Every image has a same-stem ``.png`` mask (all zero for ``MT_Free``), anti-aliased with a
    border of value 100 so that the > 127 threshold matters. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    kinds = ("blob", "scratch")
    for folder, count in (("MT_Free", n_normal), *((f"MT_{d.capitalize()}", n_per_defect) for d in defect_types)):
        for index in range(count):
            height, width = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
            image = _gray(rng, height, width)
            mask = np.zeros((height, width), dtype=bool)
            if folder != "MT_Free":
                mask = _paint(rng, image, kinds[index % 2])
            stem = f"exp{index % 2}_num_{index:05d}"
            _save_gray(image, root / folder / "Imgs" / f"{stem}.jpg")
            _save_mask(mask, root / folder / "Imgs" / f"{stem}.png")
    return root


def make_magnetic_tile_subset(
    source: str | Path,
    target: str | Path,
    n_normal: int = 40,
    n_per_defect: int = 8,
    seed: int = 0,
) -> Path:
    """Copy a seeded subset of a real Magnetic Tile folder (to bound CPU time of real-data checks)."""
    source, target = Path(source), Path(target)
    rng = np.random.default_rng(seed)
    for folder in sorted(p for p in source.glob("MT_*") if (p / "Imgs").is_dir()):
        stems = sorted(p.stem for p in (folder / "Imgs").glob("*.jpg"))
        count = n_normal if folder.name == "MT_Free" else n_per_defect
        for index in sorted(rng.permutation(len(stems))[:count]):
            for suffix in (".jpg", ".png"):
                destination = target / folder.name / "Imgs" / f"{stems[index]}{suffix}"
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / "Imgs" / f"{stems[index]}{suffix}", destination)
    return target


def make_neu_seg_like(
    root: str | Path,
    n_training: int = 9,
    n_test: int = 3,
    image_size: int = 40,
    seed: int = 0,
) -> Path:
    """Write a miniature NEU-Seg copy: ``images/{training,test}/*.jpg`` + ``annotations/...png`` (ids 1-3).

    Image ``i`` carries class ``1 + i % 3`` (inclusion, patch, scratch); every third test image
    also carries a second class. Annotations are mode ``L`` PNGs holding the class ids.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    counter = 0
    for folder, count in (("training", n_training), ("test", n_test)):
        for index in range(count):
            image = _gray(rng, image_size, image_size)
            annotation = np.zeros((image_size, image_size), dtype=np.uint8)
            classes = [1 + index % 3]
            if folder == "test" and index % 3 == 2:
                classes.append(1 + (index + 1) % 3)
            for class_id in classes:
                annotation[_paint(rng, image, "blob" if class_id != 3 else "scratch")] = class_id
            stem = f"{counter:06d}"
            counter += 1
            _save_gray(image, root / "images" / folder / f"{stem}.jpg")
            (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(annotation, mode="L").save(root / "annotations" / folder / f"{stem}.png")
    return root


def make_elpv_like(
    root: str | Path,
    counts: dict[tuple[float, str], int] | None = None,
    image_size: int = 40,
    seed: int = 0,
) -> Path:
    """Write a miniature ELPV copy: ``labels.csv`` + ``images/cellNNNN.png`` (grayscale).

    Args:
        root: Folder to write.
        counts: ``{(probability, type): number}``; default 8 normals and 2 of each other
            probability per type. Defective cells (probability > 0) get a painted crack.
        image_size: Square side in pixels.
        seed: Random seed.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    if counts is None:
        counts = {(p, t): (8 if p == 0 else 2) for p in (0.0, 1 / 3, 2 / 3, 1.0) for t in ("mono", "poly")}
    lines = []
    number = 1
    for (probability, cell_type), count in counts.items():
        for _ in range(count):
            image = _gray(rng, image_size, image_size)
            if probability > 0:
                _paint(rng, image, "scratch")
            name = f"images/cell{number:04d}.png"
            _save_gray(image, root / name)
            lines.append(f"{name}  {probability:.16g}  {cell_type}")
            number += 1
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root
