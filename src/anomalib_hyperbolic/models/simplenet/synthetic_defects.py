"""Beyond the paper: synthetic defects as extra anomalous features (``synthetic_anomalies=True``).

Every training step pastes a synthetic defect on ``copies`` copies of each batch image (anomalib's
``PerlinAnomalyGenerator``, the DRAEM generator, probability 1; textures from ``source`` or the
generator's own random patterns). The features ``o`` of every grid cell that a defect mask covers
by more than ``coverage`` join the Gaussian anomalous features of eq. (6) in the ``th^-`` term of
eq. (7). This is the image-level synthesis that GLASS (Chen et al., ECCV 2024) adds to SimpleNet,
in its simplest form (no gradient ascent). Training data only: inference is unchanged.

With ``per_head`` (and ``K`` heads) every head gets its own ``copies`` defective copies of each
image: ``K`` groups are made, and head ``k`` learns from group ``k`` only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.data.utils.generators import PerlinAnomalyGenerator
from anomalib.pre_processing import PreProcessor
from torch import nn
from torchvision.transforms.v2 import Normalize

from .defaults import DEFAULTS, require_positive_int

__all__ = ["DefectBatch", "SyntheticDefects", "SyntheticFeaturePool"]

#: Images per extractor call when a pool is drawn: EfficientNet-Lite0 at 256 px on 2 CPU cores takes
#: about 25 ms an image (bf16) at batch 8 and 39 ms at batch 32 (measured on this project's 2-core CPU, 2026-12-05).
EXTRACTION_CHUNK = 8


@dataclass(frozen=True)
class DefectBatch:
    """One step's defective copies: ``groups`` equal consecutive groups of images and their masks.

    Attributes:
        images: ``(N, 3, H, W)`` pre-processed images with synthetic defects.
        masks: ``(N, 1, H, W)`` defect masks (1 where pasted).
        groups: 1 (every head learns from every copy) or the number of heads (head ``k``: group ``k``).
        coverage: A grid cell's feature is anomalous when its mask covers more than this share of it.
    """

    images: torch.Tensor
    masks: torch.Tensor
    groups: int
    coverage: float

    def anomalous_features(self, features: torch.Tensor, head: int) -> torch.Tensor:
        """The ``(M, C)`` features of the covered grid cells for ``head``, from the copies' ``(N, H0, W0, C)`` ``o``."""
        masks = self.masks
        if self.groups > 1:
            features, masks = features.chunk(self.groups)[head], masks.chunk(self.groups)[head]
        covered = F.adaptive_avg_pool2d(masks.float(), features.shape[1:3])[:, 0] > self.coverage
        return features[covered]


class SyntheticDefects(nn.Module):
    """Makes each step's defective copies (see the module docstring).

    Args:
        source: Folder of texture images for the defects (e.g. DTD, as DRAEM); ``None`` uses the
            generator's own random patterns.
        copies: Defective copies of each batch image per step (and head, with ``per_head``).
        coverage: Share of a grid cell, in ``[0, 1)``, that a mask must cover for the cell's feature
            to count as anomalous (0 takes every cell the mask touches).
        per_head: Every head gets its own copies.

    Raises:
        ValueError: on a bad argument, naming the Lightning module's argument.
    """

    def __init__(
        self,
        source: str | os.PathLike | None = DEFAULTS.synthetic_anomaly_source,
        copies: int = DEFAULTS.synthetic_copies,
        coverage: float = DEFAULTS.synthetic_coverage,
        per_head: bool = DEFAULTS.synthetic_per_head,
    ) -> None:
        super().__init__()
        self.validate(source, copies, coverage)
        self.copies = copies
        self.coverage = coverage
        self.per_head = per_head
        self.generator = PerlinAnomalyGenerator(
            anomaly_source_path=None if source is None else str(source), probability=1.0
        )

    @staticmethod
    def validate(source: str | os.PathLike | None, copies: int, coverage: float) -> None:
        """Raise ``ValueError`` naming the Lightning module's argument that is out of range."""
        require_positive_int("synthetic_copies", copies)
        if not 0 <= coverage < 1:
            msg = f"`synthetic_coverage` (share of a grid cell) must be in [0, 1), got {coverage!r}."
            raise ValueError(msg)
        if source is not None and not Path(source).is_dir():
            msg = f"`synthetic_anomaly_source` must be a folder of images, got {str(source)!r}."
            raise ValueError(msg)

    def synthesize(
        self, images: torch.Tensor, pre_processor: PreProcessor | nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of each pre-processed image with a synthetic defect, and the ``(B, 1, H, W)`` defect masks.

        The generator works on ``[0, 1]`` pixels: a ``Normalize`` of the pre-processor is undone
        before and redone after.
        """
        normalize = None
        if isinstance(pre_processor, PreProcessor) and pre_processor.transform is not None:
            found = extract_transforms_by_type(pre_processor.transform, Normalize)
            normalize = found[0] if found else None
        if normalize is None:
            return self.generator(images)
        mean = torch.as_tensor(normalize.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(normalize.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        synthetic, masks = self.generator((images * std + mean).clamp(0, 1))
        return (synthetic - mean) / std, masks

    def forward(
        self, images: torch.Tensor, heads: int, pre_processor: PreProcessor | nn.Module | None = None
    ) -> DefectBatch:
        """This step's copies of the pre-processed ``images`` for ``heads`` heads."""
        groups = heads if self.per_head else 1
        synthetic, masks = self.synthesize(images.repeat(self.copies * groups, 1, 1, 1), pre_processor)
        return DefectBatch(synthetic, masks, groups, self.coverage)


class SyntheticFeaturePool:
    """Pre-drawn synthetic defects per training image, reused across steps (``synthetic_pool_size`` > 0).

    Live synthesis pastes new defects and runs the backbone on every copy at every step; on cached
    normal features that is most of a step's time. With a pool, the first time an image is seen
    (and again every ``refresh_epochs`` epochs, 0 = never) ``size`` defective variants of it are
    made and the extractor features ``o`` of their covered grid cells (before standardisation) are
    kept; each step then draws, per image and head group, ``copies`` distinct variants. Images are
    recognised by their content (:func:`~anomalib_hyperbolic.feature_cache.image_keys`).

    Args:
        defects: The live generator whose defects the pool holds (copies, coverage, per-head groups).
        size: Variants kept per image, at least ``copies`` (per head group).
        refresh_epochs: Epochs between redraws of every image's variants; 0 keeps them for the whole fit.
    """

    def __init__(self, defects: SyntheticDefects, size: int, refresh_epochs: int = 0) -> None:
        require_positive_int("synthetic_pool_size", size)
        if size < defects.copies:
            msg = f"`synthetic_pool_size` ({size}) must be at least `synthetic_copies` ({defects.copies})."
            raise ValueError(msg)
        if isinstance(refresh_epochs, bool) or not isinstance(refresh_epochs, int) or refresh_epochs < 0:
            msg = f"`synthetic_pool_refresh` must be an int >= 0 (epochs; 0 = never), got {refresh_epochs!r}."
            raise ValueError(msg)
        self.defects = defects
        self.size = size
        self.refresh_epochs = refresh_epochs
        self.clear()

    def clear(self) -> None:
        """Forget every image's variants (they are drawn again when next needed)."""
        self.variants: dict[str, list[torch.Tensor]] = {}
        self.epochs = 0

    def end_epoch(self) -> None:
        """Count an epoch; redraw every variant at the next use when ``refresh_epochs`` have passed."""
        self.epochs += 1
        if self.refresh_epochs and self.epochs % self.refresh_epochs == 0:
            self.variants = {}

    def anomalous_features(
        self,
        images: torch.Tensor,
        keys: list[str],
        heads: int,
        extract: Callable[[torch.Tensor], torch.Tensor],
        pre_processor: PreProcessor | nn.Module | None = None,
    ) -> list[torch.Tensor]:
        """Per head, the ``(M, C)`` channel-last ``o`` of covered cells of this step's drawn variants.

        ``extract`` maps ``(N, 3, H, W)`` images to the extractor's ``(N, C, H0, W0)`` output.
        """
        missing = [index for index, key in enumerate(keys) if key not in self.variants]
        if missing:
            batch = images[missing]
            synthetic, masks = self.defects.synthesize(batch.repeat(self.size, 1, 1, 1), pre_processor)
            with torch.no_grad():  # in chunks: per image, the backbone runs fastest at small batches on a CPU
                chunks = synthetic.split(EXTRACTION_CHUNK)
                features = torch.cat([extract(chunk) for chunk in chunks]).permute(0, 2, 3, 1)
            covered = F.adaptive_avg_pool2d(masks.float(), features.shape[1:3])[:, 0] > self.defects.coverage
            for position, index in enumerate(missing):  # variant v of image j is row v * len(batch) + j
                rows = range(position, len(synthetic), len(batch))
                self.variants[keys[index]] = [features[row][covered[row]].detach() for row in rows]
        groups = heads if self.defects.per_head else 1
        drawn = []
        for _ in range(groups):
            parts = []
            for key in keys:
                choice = torch.randperm(self.size)[: self.defects.copies]
                parts.extend(self.variants[key][int(v)] for v in choice)
            drawn.append(torch.cat(parts).to(images.device))
        return drawn if groups > 1 else drawn * heads
