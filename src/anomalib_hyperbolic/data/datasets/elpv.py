"""ELPV solar cell dataset (electroluminescence images), image-level labels only.

Description:
    2,624 grayscale 300 x 300 cells cropped from electroluminescence images of 44 solar
    modules, each with an expert defect probability in {0, 1/3, 2/3, 1} and the cell type
    ``mono`` or ``poly`` (crystalline). Counts by probability: 1,508 / 295 / 106 / 715.

Source and licence:
    https://github.com/zae-bayern/elpv-dataset, also published on PyPI as ``elpv-dataset``
    (the images travel inside the wheel). Licence: CC BY-NC-SA 4.0, as stated by the authors.

References:
    Buerhop-Lutz, C. et al. "A benchmark for visual identification of defective solar cells in
    electroluminescence imagery." EU PVSEC 2018. Deitsch, S. et al. "Automatic classification
    of defective photovoltaic module cells in electroluminescence images." Solar Energy 185
    (2019); "Segmentation of photovoltaic module cells in uncalibrated electroluminescence
    images." Machine Vision and Applications 32 (2021).

Layout (the repository's, which :func:`materialize_elpv` writes from the PyPI package)::

    root/labels.csv          lines "images/cell0001.png  1.0  mono"
    root/images/cell0001.png

Protocol (DRA's default): normal = probability <= ``normal_max_probability`` (0), anomalous =
probability >= ``anomaly_min_probability`` (1), the cells in between left out; the cell type is
the anomaly class (``label``) of anomalous cells; a seeded ``train_split_ratio`` (0.75) of the
normals trains (1,131) and the rest (377) plus all 715 anomalies test.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
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
    split_normals,
)

__all__ = ["CELL_TYPES", "ELPVDataset", "make_elpv_dataset", "materialize_elpv", "read_elpv_labels"]

logger = logging.getLogger(__name__)

CELL_TYPES = ("mono", "poly")
LABELS_FILE = "labels.csv"
_EXPECTED = f"'{LABELS_FILE}' (lines '<images/cellNNNN.png> <probability> <mono|poly>') and the images it lists"


def read_elpv_labels(labels_file: str | Path) -> pd.DataFrame:
    """Parse an ELPV ``labels.csv`` into columns ``image, probability, cell_type`` (naming bad lines)."""
    rows = []
    for number, line in enumerate(Path(labels_file).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 3:
                raise ValueError("expected 3 fields")
            probability = float(fields[1])
        except ValueError as error:
            msg = f"{labels_file}:{number}: cannot parse {line!r} ({error}); expected '<image> <probability> <type>'."
            raise ValueError(msg) from error
        if fields[2] not in CELL_TYPES or not 0.0 <= probability <= 1.0:
            msg = f"{labels_file}:{number}: {line!r} needs a probability in [0, 1] and a type in {CELL_TYPES}."
            raise ValueError(msg)
        rows.append((fields[0], probability, fields[2]))
    if not rows:
        msg = f"{labels_file} lists no cells; expected {_EXPECTED}."
        raise ValueError(msg)
    return pd.DataFrame(rows, columns=["image", "probability", "cell_type"])


def _package_data_dir() -> Path:
    try:
        package = importlib.import_module("elpv_dataset")
    except ImportError as error:
        msg = "ELPV needs the 'elpv-dataset' package: pip install elpv-dataset (or anomalib-hyperbolic[elpv])."
        raise ImportError(msg) from error
    return Path(package.__file__).parent / "data"


def _is_complete(root: Path) -> bool:
    labels = root / LABELS_FILE
    if not labels.is_file():
        return False
    try:
        table = read_elpv_labels(labels)
    except ValueError:
        return False
    return all((root / name).is_file() for name in table.image)


def materialize_elpv(root: str | Path) -> Path:
    """Write the ELPV images (PNG) and ``labels.csv`` from the ``elpv-dataset`` package into ``root``.

    Idempotent: returns at once when ``root/labels.csv`` and every image it lists exist.
    ``labels.csv`` is written last (atomically), so an interrupted run is redone on the next
    call. The wheel's files are already PNG and are copied byte for byte; if a later package
    version stops shipping them, the arrays of ``elpv_dataset.load_dataset()`` are encoded.
    """
    root = Path(root)
    if _is_complete(root):
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    source = _package_data_dir()
    if (source / LABELS_FILE).is_file():
        table = read_elpv_labels(source / LABELS_FILE)
        for name in table.image:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_file() or target.stat().st_size != (source / name).stat().st_size:
                shutil.copyfile(source / name, target)
        text = (source / LABELS_FILE).read_text()
    else:  # pragma: no cover - depends on the package layout
        from PIL import Image

        package = importlib.import_module("elpv_dataset")
        images, probabilities, types = package.load_dataset()
        lines = []
        for index, (image, probability, cell_type) in enumerate(zip(images, probabilities, types, strict=True)):
            name = f"images/cell{index + 1:04d}.png"
            Image.fromarray(np.asarray(image)).save(root / name)
            lines.append(f"{name}  {float(probability)}  {cell_type}")
        text = "\n".join(lines) + "\n"
    handle, temporary = tempfile.mkstemp(dir=root, prefix=".labels", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    Path(temporary).replace(root / LABELS_FILE)
    logger.info("Materialised ELPV into %s", root)
    return root


def make_elpv_dataset(
    root: str | Path,
    split: str | Split | None = None,
    normal_max_probability: float = 0.0,
    anomaly_min_probability: float = 1.0,
    cell_types: Sequence[str] = CELL_TYPES,
    train_split_ratio: float = 0.75,
    split_seed: int = 0,
    train_anomalies: int = 0,
    seen_anomaly_type: str | None = None,
) -> pd.DataFrame:
    """Samples DataFrame of an ELPV folder (see the module docstring for the protocol).

    Args:
        root: Folder holding ``labels.csv`` and ``images/``.
        split: ``train``, ``test`` or ``None`` for all rows.
        normal_max_probability: Cells with a defect probability <= this are normal.
        anomaly_min_probability: Cells with a defect probability >= this are anomalous
            (e.g. ``0.3`` with ``normal_max_probability=0`` counts every defective cell).
        cell_types: Cell types to keep.
        train_split_ratio: Fraction of normals used for training.
        split_seed: Seed of the normal split (and of the anomaly draw below).
        train_anomalies: Labelled anomalies moved from test to train (DRA's protocols).
        seen_anomaly_type: ``mono`` or ``poly``: DRA's hard setting (draw from that type only and
            drop its other anomalies from the test set).

    Returns:
        Columns ``path, split, label, label_index, image_path, mask_path, probability, cell_type``;
        ``label`` is ``good`` or the cell type; ``mask_path == ""``;
        ``attrs["task"] == "classification"``.
    """
    root = Path(root)
    if not normal_max_probability < anomaly_min_probability:
        msg = (
            f"normal_max_probability ({normal_max_probability}) must be below anomaly_min_probability "
            f"({anomaly_min_probability})."
        )
        raise ValueError(msg)
    cell_types = tuple(cell_types)
    if not cell_types or set(cell_types) - set(CELL_TYPES):
        msg = f"cell_types must be a non-empty subset of {CELL_TYPES}, got {list(cell_types)}."
        raise ValueError(msg)
    labels_file = root / LABELS_FILE
    if not labels_file.is_file():
        msg = f"ELPV file '{labels_file}' is missing; expected {_EXPECTED} (ELPV.prepare_data() writes them)."
        raise FileNotFoundError(msg)
    table = read_elpv_labels(labels_file)
    table["image_path"] = [str(root / name) for name in table.image]
    missing = [path for path in table.image_path if not Path(path).is_file()]
    if missing:
        msg = f"{len(missing)} image(s) listed in '{labels_file}' are missing, e.g. {missing[:5]}."
        raise FileNotFoundError(msg)
    table = table[table.cell_type.isin(cell_types)]
    normal = table.probability <= normal_max_probability
    anomalous = table.probability >= anomaly_min_probability
    table = table[normal | anomalous].copy()
    table["label_index"] = np.where(table.probability >= anomaly_min_probability, 1, 0).astype(int)
    table["label"] = np.where(table.label_index == LabelName.ABNORMAL, table.cell_type, "good")
    table["mask_path"] = ""
    table["path"] = str(root)
    samples = split_normals(table.reset_index(drop=True), train_split_ratio, split_seed)
    samples = move_anomalies_to_train(samples, train_anomalies, split_seed, seen_anomaly_type)
    columns = ["path", "split", "label", "label_index", "image_path", "mask_path", "probability", "cell_type"]
    samples = samples[columns].sort_values("image_path", ignore_index=True)
    samples.attrs["task"] = "classification"
    return filter_split(samples, split)


class ELPVDataset(SurfaceDefectDataset):
    """ELPV dataset (one split); classification only (``gt_mask`` is ``None``).

    Args:
        root: Folder holding ``labels.csv`` and ``images/`` (see :func:`materialize_elpv`).
        augmentations: Transforms applied to the image.
        split: ``train``, ``test`` or ``None``.
        **kwargs: Passed to :func:`make_elpv_dataset`.
    """

    def __init__(
        self,
        root: str | Path = "./datasets/elpv",
        augmentations: Transform | None = None,
        split: str | Split | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self.root = Path(root)
        self.split = split
        self.samples = make_elpv_dataset(self.root, split=split, **kwargs)
