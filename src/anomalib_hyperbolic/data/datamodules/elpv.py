"""ELPV data module (solar cells, image-level labels).

The images come from the ``elpv-dataset`` PyPI package; :meth:`ELPV.prepare_data` copies them
once into ``root`` (PNG files plus ``labels.csv``) because anomalib datasets are file-path based.
Licence: CC BY-NC-SA 4.0 (as stated by the authors).

Example:
    >>> from anomalib_hyperbolic.data import ELPV
    >>> datamodule = ELPV(root="./datasets/elpv")
    >>> datamodule.prepare_data()
    >>> datamodule.setup()
    >>> len(datamodule.train_data), len(datamodule.test_data)
    (1131, 1092)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from anomalib.utils.path import resolve_dataset_root
from torchvision.transforms.v2 import Transform

from anomalib_hyperbolic.data.datasets.elpv import CELL_TYPES, ELPVDataset, materialize_elpv

__all__ = ["ELPV"]

logger = logging.getLogger(__name__)


class ELPV(AnomalibDataModule):
    """ELPV data module (DRA's protocol by default: normal = probability 0, anomaly = probability 1).

    Args:
        root: Cache folder for ``labels.csv`` and ``images/`` (written by :meth:`prepare_data`).
        train_batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: Data loader workers.
        train_augmentations: Augmentations of training images.
        val_augmentations: Augmentations of validation images.
        test_augmentations: Augmentations of test images.
        augmentations: Augmentations of any split without its own.
        normal_max_probability: Cells with a defect probability <= this are normal.
        anomaly_min_probability: Cells with a defect probability >= this are anomalous; cells
            in between are left out.
        cell_types: Cell types to keep (``mono``, ``poly``).
        train_split_ratio: Fraction of normals used for training (DRA: 0.75 -> 1,131 / 377).
        split_seed: Seed of the normal split and of the anomaly draw.
        train_anomalies: Labelled anomalies moved from test to train (DRA: 1 or 10; 0 = none).
        seen_anomaly_type: ``mono`` or ``poly`` for DRA's hard setting.
        test_split_mode: anomalib's test split mode (the test split already has normals).
        test_split_ratio: anomalib's test split ratio (unused with ``from_dir``).
        val_split_mode: anomalib's validation split mode.
        val_split_ratio: Fraction for ``from_test``/``from_train``/``synthetic`` validation.
        seed: Seed of anomalib's own val/test re-splitting.
    """

    def __init__(
        self,
        root: Path | str | None = "./datasets/elpv",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        normal_max_probability: float = 0.0,
        anomaly_min_probability: float = 1.0,
        cell_types: Sequence[str] = CELL_TYPES,
        train_split_ratio: float = 0.75,
        split_seed: int = 0,
        train_anomalies: int = 0,
        seen_anomaly_type: str | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.root = resolve_dataset_root(root, "elpv")
        self.dataset_kwargs = {
            "normal_max_probability": normal_max_probability,
            "anomaly_min_probability": anomaly_min_probability,
            "cell_types": tuple(cell_types),
            "train_split_ratio": train_split_ratio,
            "split_seed": split_seed,
            "train_anomalies": train_anomalies,
            "seen_anomaly_type": seen_anomaly_type,
        }

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = ELPVDataset(root=self.root, split=Split.TRAIN, **self.dataset_kwargs)
        self.test_data = ELPVDataset(root=self.root, split=Split.TEST, **self.dataset_kwargs)

    def prepare_data(self) -> None:
        """Write the images and ``labels.csv`` from the ``elpv-dataset`` package into ``root`` (once)."""
        materialize_elpv(self.root)
