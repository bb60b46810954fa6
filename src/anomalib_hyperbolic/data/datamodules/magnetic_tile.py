"""Magnetic Tile (MT-Defect) data module.

Description:
    Lightning data module over :class:`~anomalib_hyperbolic.data.datasets.magnetic_tile.MagneticTileDataset`.
    Images are grayscale with varied sizes; they are read as 3-channel RGB (as every anomalib
    dataset) and brought to a common size by the model's pre-processor, whose ``Resize`` anomalib
    appends to the dataset augmentations when training through ``Engine``.

Source and licence:
    https://github.com/abin24/Magnetic-tile-defect-datasets. - the authors ask for a citation of
    Huang, Qiu & Yuan, "Surface defect saliency of magnetic tile", The Visual Computer 36 (2020);
    no licence is stated.

Example:
    >>> from anomalib_hyperbolic.data import MagneticTile
    >>> datamodule = MagneticTile(root="./datasets/magnetic_tile")
    >>> datamodule.setup()
    >>> len(datamodule.train_data), len(datamodule.test_data)
    (762, 582)

    From the CLI: ``anomalib train --model Padim --data MagneticTile --data.root ./datasets/magnetic_tile``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal
from urllib.request import urlretrieve

from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.utils import DownloadInfo, Split, TestSplitMode, ValSplitMode
from anomalib.data.utils.download import DownloadProgressBar, extract
from anomalib.utils.path import resolve_dataset_root
from torchvision.transforms.v2 import Transform

from anomalib_hyperbolic.data.datasets.magnetic_tile import DEFECT_TYPES, MagneticTileDataset

__all__ = ["CONTENT_SHA256", "DOWNLOAD_INFO", "MagneticTile", "download_magnetic_tile", "magnetic_tile_checksum"]

logger = logging.getLogger(__name__)

#: The public repository's archive. GitHub builds archives on the fly and does not promise stable
#: bytes, so ``hashsum`` is the SHA-256 of the extracted *content* (see :func:`magnetic_tile_checksum`),
#: not of the zip file. It was computed from a local copy of the repository (1,344 images and
#: their masks); it could not be checked against a fresh download (no network where it was written).
DOWNLOAD_INFO = DownloadInfo(
    name="magnetic_tile",
    url="https://github.com/abin24/Magnetic-tile-defect-datasets./archive/refs/heads/master.zip",
    hashsum="426e4d9cc292eff45e476cee5b9bf3183004abd4575e1a54e154c0bedf6c17d2",
    filename="Magnetic-tile-defect-datasets.-master.zip",
)
CONTENT_SHA256 = DOWNLOAD_INFO.hashsum
_EXTRACTED_FOLDER = "Magnetic-tile-defect-datasets.-master"


def magnetic_tile_checksum(root: str | Path) -> str:
    """SHA-256 over ``"<relative path> <file sha256>"`` lines of every ``MT_*/Imgs/*.jpg|png`` under ``root``."""
    root = Path(root)
    digest = hashlib.sha256()
    files = sorted(p for p in root.glob("MT_*/Imgs/*") if p.suffix.lower() in {".jpg", ".png"})
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def download_magnetic_tile(root: str | Path, info: DownloadInfo | None = None) -> Path:
    """Download the repository archive, extract it into ``root`` and verify the content checksum.

    Uses anomalib's download progress bar and safe ``extract`` (which deletes the archive).
    ``info`` defaults to :data:`DOWNLOAD_INFO`.

    Raises:
        ValueError: If the extracted images differ from the expected content checksum.
    """
    info = info or DOWNLOAD_INFO
    root = Path(root)
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    archive = parent / (info.filename or info.url.split("/")[-1])
    if not archive.exists():
        logger.info("Downloading the %s dataset from %s", info.name, info.url)
        with DownloadProgressBar(unit="B", unit_scale=True, miniters=1, desc=info.name) as progress_bar:
            urlretrieve(info.url, filename=archive, reporthook=progress_bar.update_to)
    extract(archive, parent)
    extracted = parent / _EXTRACTED_FOLDER
    if extracted.is_dir() and extracted != root:
        if root.exists():
            msg = f"Cannot move '{extracted}' to '{root}': the target exists."
            raise FileExistsError(msg)
        shutil.move(str(extracted), str(root))
    checksum = magnetic_tile_checksum(root)
    if checksum != info.hashsum:
        msg = (
            f"Content checksum {checksum} of the Magnetic Tile images in '{root}' does not match the expected "
            f"{info.hashsum}; the download may be incomplete or the repository may have changed."
        )
        raise ValueError(msg)
    return root


class MagneticTile(AnomalibDataModule):
    """Magnetic Tile (MT-Defect) data module.

    Args:
        root: Folder holding ``MT_Free`` and ``MT_<Defect>`` (downloaded there when missing).
        train_batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: Data loader workers.
        train_augmentations: Augmentations of training images.
        val_augmentations: Augmentations of validation images.
        test_augmentations: Augmentations of test images.
        augmentations: Augmentations of any split without its own.
        defect_types: Defect classes to use (subset of ``blowhole, break, crack, fray, uneven``).
        split_mode: ``"one_class"`` (normals split by ``train_split_ratio``, every defect in test)
            or ``"ratio"`` (all images split train/val/test by ``split_ratios`` per class).
        train_split_ratio: Fraction of normals for training in ``one_class`` mode.
        split_ratios: train/val/test fractions in ``ratio`` mode (HADNet's 8:1:1).
        split_seed: Seed of the dataset split (kept apart from ``seed`` so that the test set does
            not change with the training seed).
        mask_threshold: Mask pixels brighter than this are defects (masks are anti-aliased).
        train_anomalies: Labelled defects moved from test to train (DRA's protocols; 0 = none).
        seen_anomaly_type: DRA's hard setting: draw the training defects from this class only and
            drop its other defects from the test set.
        test_split_mode: anomalib's test split mode (the test folder already has normals).
        test_split_ratio: anomalib's test split ratio (unused with ``from_dir``).
        val_split_mode: Defaults to ``from_dir`` in ``ratio`` mode, else ``same_as_test``.
        val_split_ratio: Fraction for ``from_test``/``from_train``/``synthetic`` validation.
        seed: Seed of anomalib's own val/test re-splitting.
    """

    def __init__(
        self,
        root: Path | str | None = "./datasets/magnetic_tile",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        defect_types: Sequence[str] = DEFECT_TYPES,
        split_mode: Literal["one_class", "ratio"] = "one_class",
        train_split_ratio: float = 0.8,
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        mask_threshold: int = 127,
        train_anomalies: int = 0,
        seen_anomaly_type: str | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
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
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.root = resolve_dataset_root(root, "magnetic_tile")
        self.mask_threshold = mask_threshold
        self.dataset_kwargs = {
            "defect_types": tuple(defect_types),
            "split_mode": split_mode,
            "train_split_ratio": train_split_ratio,
            "split_ratios": tuple(split_ratios),
            "split_seed": split_seed,
            "train_anomalies": train_anomalies,
            "seen_anomaly_type": seen_anomaly_type,
        }

    def _dataset(self, split: Split) -> MagneticTileDataset:
        return MagneticTileDataset(
            root=self.root, split=split, mask_threshold=self.mask_threshold, **self.dataset_kwargs
        )

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = self._dataset(Split.TRAIN)
        self.test_data = self._dataset(Split.TEST)
        if self.dataset_kwargs["split_mode"] == "ratio":
            self.val_data = self._dataset(Split.VAL)

    def prepare_data(self) -> None:
        """Download the dataset from the public repository archive when ``root`` is missing."""
        if self.root.is_dir():
            logger.info("Found the dataset.")
        else:
            download_magnetic_tile(self.root)
