"""The benchmark's seeded image subset: a per-image draw keyed on paths relative to the dataset root.

Every image is kept or left out by a hash of the seed and its path relative to the dataset root
(``MT_Free/Imgs/x.jpg``; see :func:`subset_image_names`), so a relative root, an absolute root or a
copy of the data elsewhere keep the same images, and every cell of a grid sees the same images.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def dataset_root(datamodule: Any) -> Path | None:
    """The folder a datamodule reads its images from: its ``root``, else that of the datamodule it wraps.

    ``MVTecAD``, ``Folder`` and this package's datamodules keep it as ``root``; wrappers such as
    :class:`~anomalib_hyperbolic.data.FewShotAnomalies` hold the wrapped one as ``datamodule``.
    ``None`` when neither has one (e.g. a ``Folder`` built from absolute folders without ``root``).
    """
    while datamodule is not None:
        root = getattr(datamodule, "root", None)
        if root is not None:
            return Path(root)
        datamodule = getattr(datamodule, "datamodule", None)
    return None


def _relative_name(path: str | Path, base: Path) -> str | None:
    """``path`` relative to ``base`` in POSIX form (``MT_Free/Imgs/x.jpg``); ``None`` when it lies outside.

    Both are made absolute first (against the working directory), as written and, failing that, with
    symbolic links resolved (:meth:`Path.resolve`).
    """
    for candidate, folder in (
        (Path(os.path.abspath(path)), Path(os.path.abspath(base))),
        (Path(path).resolve(), base.resolve()),
    ):
        if candidate.is_relative_to(folder):
            return candidate.relative_to(folder).as_posix()
    return None


def subset_image_names(datamodule: Any) -> dict[str, str]:
    """The name under which :func:`apply_subset` draws each image of a (set-up) datamodule's splits.

    The name is the image path relative to the dataset's root (:func:`dataset_root`), in POSIX form,
    so a relative root, an absolute root or a copy of the data in another folder keep the same images.
    When the datamodule has no root, or some image lies outside it (a ``Folder`` with an absolute
    ``abnormal_dir`` elsewhere), every image is named relative to the common parent folder of all the
    images of the train, val and test splits instead (a warning says so when there was a root): still
    independent of where the data lies, as long as the folder layout below that parent is kept.
    """
    paths = sorted(
        {
            str(path)
            for split in ("train", "val", "test")
            if getattr(datamodule, f"{split}_data", None) is not None
            for path in getattr(datamodule, f"{split}_data").samples["image_path"]
        }
    )
    root = dataset_root(datamodule)
    if root is not None:
        names = {path: _relative_name(path, root) for path in paths}
        outside = [path for path, name in names.items() if name is None]
        if not outside:
            return names  # type: ignore[return-value]
        logger.warning(
            "%d image(s) lie outside the dataset root %s (e.g. %s): the subset draw names images relative to "
            "their common parent folder instead",
            len(outside),
            root,
            outside[0],
        )
    if not paths:
        return {}
    parent = Path(os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths]))
    return {path: Path(os.path.abspath(path)).relative_to(parent).as_posix() for path in paths}


def _subset_indices(
    samples: Any,
    fraction: float,
    seed: int,
    keep_anomalous: bool = False,
    complement: bool = False,
    names: dict[str, str] | None = None,
) -> list[int]:
    """Rows kept by a seeded per-image draw: image ``p`` stays when ``sha256(seed:name(p))`` < ``fraction``.

    ``names`` maps each image path to the name it is drawn under (see :func:`subset_image_names`:
    the path relative to the dataset root); without it, the path as the samples list it. The decision
    for an image depends on its name and the seed only, so every cell keeps the same images even when
    a data wrapper moved a few of them to another split (DRA's labelled anomalies), wherever the data
    lies, and every (label, anomaly type) group keeps about ``fraction`` of its images. With
    ``complement`` the images that the same draw would *not* keep are kept instead: a disjoint set,
    e.g. to confirm a setting chosen on the drawn subset.
    """
    names = names or {}
    kept = []
    for index, (path, label) in enumerate(zip(samples["image_path"], samples["label_index"], strict=True)):
        name = names.get(str(path), str(path))
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        drawn = int.from_bytes(digest[:8], "big") < fraction * 2**64
        if (keep_anomalous and int(label) == 1) or drawn != complement:
            kept.append(index)
    return kept


def apply_subset(datamodule: Any, subset: dict[str, Any] | None) -> dict[str, int]:
    """Set the datamodule up once and keep a seeded fraction of its splits (a per-image draw).

    ``subset`` maps split names (``train``, ``val``, ``test``) to fractions in (0, 1] plus an
    optional ``seed`` and an optional ``complement`` list of splits for which the images the draw
    leaves out are kept instead (a disjoint set). Every cell gets the same images: the split and the
    choice are seeded (see :func:`_subset_indices`) and key on the image paths relative to the dataset
    root (:func:`subset_image_names`), so the same images are kept wherever the data lies; labelled
    anomalies in the training split (few-shot data) are all kept. Returns the number of images per
    split after the cut.
    """
    from lightning.pytorch.trainer.states import TrainerFn

    datamodule.setup(TrainerFn.FITTING)  # marks the datamodule as set up: the trainer keeps the cut
    subset = dict(subset or {})
    seed = int(subset.pop("seed", 0))
    complement = set(subset.pop("complement", None) or [])
    unknown = sorted((set(subset) | complement) - {"train", "val", "test"})
    if unknown:
        msg = f"benchmark subset keys must be train, val, test, seed or complement; got {unknown}"
        raise ValueError(msg)
    missing = sorted(complement - set(subset))
    if missing:
        msg = f"benchmark subset.complement names splits without a fraction: {missing}"
        raise ValueError(msg)
    names = subset_image_names(datamodule) if subset else {}
    for split, fraction in subset.items():
        fraction = float(fraction)
        if not 0 < fraction <= 1:
            msg = f"benchmark subset.{split} must be a fraction in (0, 1], got {fraction}"
            raise ValueError(msg)
        dataset = getattr(datamodule, f"{split}_data", None)
        if dataset is None:
            msg = f"benchmark subset.{split}: the datamodule has no {split} split"
            raise ValueError(msg)
        indices = _subset_indices(
            dataset.samples,
            fraction,
            seed,
            keep_anomalous=split == "train",
            complement=split in complement,
            names=names,
        )
        if not indices:
            msg = f"benchmark subset.{split}={fraction} keeps no image of the {len(dataset)} in that split"
            raise ValueError(msg)
        dataset.subsample(indices, inplace=True)
    return {
        split: len(getattr(datamodule, f"{split}_data"))
        for split in ("train", "val", "test")
        if getattr(datamodule, f"{split}_data", None) is not None
    }
