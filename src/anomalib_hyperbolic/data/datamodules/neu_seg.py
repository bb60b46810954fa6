"""NEU-Seg data module (supervised defect segmentation).

Every NEU-Seg image is defective, so the training split holds defective images with their
masks, all labelled anomalous (``label_index`` 1); the split is either the repository's
``training``/``test`` folders or HADNet's seeded 8:1:1 train/val/test split. anomalib's
one-class assumptions do not hold: image-level metrics (one class only) are undefined, use
pixel metrics; a model trained on this module must learn from the masks (HADNet's supervised
mode), not from "normal" training images.

Source: https://github.com/DHW-Master/NEU_Seg (no licence file; derived from K. Song and
Y. Yan's NEU surface defect database - cite the authors).

Example:
    >>> from anomalib_hyperbolic.data import NEUSeg
    >>> datamodule = NEUSeg(root="./datasets/neu_seg", split_mode="ratio")  # 8:1:1
    >>> datamodule.setup()
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from anomalib.utils.path import resolve_dataset_root
from torchvision.transforms.v2 import Transform

from anomalib_hyperbolic.data.datasets.neu_seg import NEUSegDataset

__all__ = ["NEUSeg"]

logger = logging.getLogger(__name__)


class NEUSeg(AnomalibDataModule):
    """NEU-Seg data module.

    Args:
        root: Folder holding ``images/{training,test}`` and ``annotations/{training,test}``.
        train_batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: Data loader workers.
        train_augmentations: Augmentations of training images (applied to masks too).
        val_augmentations: Augmentations of validation images.
        test_augmentations: Augmentations of test images.
        augmentations: Augmentations of any split without its own.
        split_mode: ``"official"`` (repository folders; validation = test unless
            ``val_split_mode`` says otherwise) or ``"ratio"`` (pooled, seeded ``split_ratios``
            within each class combination, with its own validation split).
        split_ratios: train/val/test fractions for ``ratio`` mode (HADNet: 8:1:1).
        split_seed: Seed of the ``ratio`` split.
        category: ``inclusion``, ``patch`` or ``scratch`` to keep only images showing that class
            and use its pixels as the mask (per-class IoU), or ``None`` for all classes.
        val_split_mode: Defaults to ``from_dir`` in ``ratio`` mode, else ``same_as_test``.
        val_split_ratio: Fraction for ``from_test``/``from_train`` validation.
        seed: Seed of anomalib's own val re-splitting.

    Note:
        anomalib's test re-splitting is off (``test_split_mode="none"``): it would move training
        images (all defective) into the test set as if they were normal.
    """

    def __init__(
        self,
        root: Path | str | None = "./datasets/neu_seg",
        train_batch_size: int = 8,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        split_mode: Literal["official", "ratio"] = "official",
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        category: Literal["inclusion", "patch", "scratch"] | None = None,
        val_split_mode: ValSplitMode | str | None = None,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
    ) -> None:
        if val_split_mode is None:
            val_split_mode = ValSplitMode.FROM_DIR if split_mode == "ratio" else ValSplitMode.SAME_AS_TEST
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=TestSplitMode.NONE,
            test_split_ratio=None,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.root = resolve_dataset_root(root, "neu_seg")
        self.category = category or ""
        self.dataset_kwargs = {
            "split_mode": split_mode,
            "split_ratios": tuple(split_ratios),
            "split_seed": split_seed,
            "category": category,
        }

    def _dataset(self, split: Split) -> NEUSegDataset:
        return NEUSegDataset(root=self.root, split=split, **self.dataset_kwargs)

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = self._dataset(Split.TRAIN)
        self.test_data = self._dataset(Split.TEST)
        if self.dataset_kwargs["split_mode"] == "ratio":
            self.val_data = self._dataset(Split.VAL)

    def prepare_data(self) -> None:
        """Check that the folder exists (NEU-Seg is not downloaded automatically)."""
        if not Path(self.root).is_dir():
            msg = (
                f"NEU-Seg root '{self.root}' does not exist; clone https://github.com/DHW-Master/NEU_Seg there "
                "(images/{training,test}, annotations/{training,test})."
            )
            raise FileNotFoundError(msg)
