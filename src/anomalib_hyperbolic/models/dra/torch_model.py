"""PyTorch model of DRA (Ding, Pang and Shen, CVPR 2022).

"Catching Both Gray and Black Swans: Open-set Supervised Anomaly Detection".

A shared feature network feeds four independent heads (DRA eq. 1):

* seen abnormality head (eqs. 2-3): a 1x1 convolution scores every feature-map vector (patch);
  the image score is the mean of the top-k patch scores (top-k multiple-instance learning,
  ``k = top_k_ratio`` of the patches);
* pseudo abnormality head (eqs. 4-5): the same architecture, trained on CutMix pseudo anomalies;
* latent residual abnormality head (eqs. 6-8): the same scoring on the residual between the mean
  feature map of ``num_reference`` reference images and the image's feature map, after a
  3x3 conv + BN + ReLU (as the official implementation);
* normality head (eq. 9): global average pooling, then a 2-layer MLP ``C -> 256 -> 1``.

Scores of every head are computed on a two-level image pyramid (full and half resolution) and
averaged (appendix B.1). The anomaly score is ``seen + pseudo + residual - normal``.

Training: :meth:`DRAModel.forward` takes the images and ``N_r`` reference images (which ones:
:class:`ReferenceSampler`, as the official code draws them) and returns the four heads' image scores,
which :class:`~.loss.DRALoss` takes.

At inference the mean reference feature maps are buffers (``reference_features_<s>``), computed
once from the stored ``reference_images`` by :meth:`DRAModel.update_reference_features`, so the
exported model is self-contained. The anomaly map is the sum of the three abnormality heads'
patch scores, bilinearly upsampled to the input size and averaged over the pyramid: DRA is an
image-level method and these maps are coarse (one value per feature-map cell).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_hyperbolic.backbones import create_feature_extractor, feature_layer_names, resolve_backbone

from .defaults import DEFAULTS

__all__ = ["DRAModel", "NormalityHead", "PatchAnomalyHead", "ReferenceSampler", "ResidualAnomalyHead", "top_k_mean"]

logger = logging.getLogger(__name__)

HEADS = ("seen", "pseudo", "residual", "normal")


def top_k_mean(patch_scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Mean of the ``k = max(1, int(ratio * N))`` largest of ``N`` patch scores per image (DRA eq. 3).

    Args:
        patch_scores: ``(B, 1, h, w)`` or ``(B, N)`` patch scores.
        ratio: Fraction of patches kept.

    Returns:
        ``(B,)`` image scores.
    """
    flat = patch_scores.flatten(1)
    k = max(1, int(flat.shape[1] * ratio))
    return torch.topk(flat, k, dim=1).values.mean(dim=1)


class PatchAnomalyHead(nn.Module):
    """Patch-wise anomaly classifier with top-k MIL (DRA eqs. 2-3; seen and pseudo heads).

    Patch scores are the absolute values of a 1x1 convolution, as in the official code.
    """

    def __init__(self, in_dim: int, top_k_ratio: float = DEFAULTS.top_k_ratio) -> None:
        super().__init__()
        self.scoring = nn.Conv2d(in_dim, 1, kernel_size=1)
        self.top_k_ratio = top_k_ratio

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` non-negative patch scores."""
        return self.scoring(features).abs()

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores ``(B,)`` and patch scores ``(B, 1, h, w)``."""
        patches = self.patch_scores(features)
        return top_k_mean(patches, self.top_k_ratio), patches


class ResidualAnomalyHead(PatchAnomalyHead):
    """Latent residual abnormality head (DRA eqs. 6-8): top-k MIL on ``mean reference - features``."""

    def __init__(self, in_dim: int, top_k_ratio: float = DEFAULTS.top_k_ratio) -> None:
        super().__init__(in_dim, top_k_ratio)
        self.transform = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, kernel_size=3, padding=1),
            nn.BatchNorm2d(in_dim),
            nn.ReLU(),
        )

    def forward(  # type: ignore[override]
        self,
        features: torch.Tensor,
        reference: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and patch scores of the residual of ``features`` to the mean ``reference`` map (eq. 7)."""
        residual = reference - features
        return super().forward(self.transform(residual))


class NormalityHead(nn.Module):
    """Holistic normality head (DRA eq. 9): GAP, ``C -> hidden -> 1`` MLP, absolute value."""

    def __init__(self, in_dim: int, hidden_dim: int = DEFAULTS.normality_hidden) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B,)`` normality scores."""
        pooled = features.mean(dim=(2, 3))
        return self.fc2(F.relu(self.fc1(pooled))).abs().squeeze(1)


class ReferenceSampler:
    """Which training normals serve as the ``N_r`` reference images of eq. (6).

    Training: a fresh seeded draw every step, as the official code (a separate loader of training
    normals yields a new reference batch per iteration), of ``N_r`` distinct images outside the step's
    batch when possible. Inference: one fixed seeded set (the official evaluation draws a new batch per
    test batch, which makes scores depend on the draw and cannot be exported).

    Args:
        pool: Dataset indices of the training normals.
        num_reference: ``N_r``.
        seed: Seed of the training draws; the inference set uses ``seed + 1``.

    Raises:
        ValueError: ``pool`` has fewer than ``num_reference`` images.
    """

    def __init__(self, pool: Sequence[int], num_reference: int, seed: int) -> None:
        self.pool = [int(index) for index in pool]
        if len(self.pool) < num_reference:
            msg = (
                f"DRA needs at least num_reference={num_reference} normal training images for its reference "
                f"set; the training split has {len(self.pool)}. Lower num_reference or add normals."
            )
            raise ValueError(msg)
        self.num_reference = num_reference
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.warned_overlap = False

    def inference_indices(self) -> list[int]:
        """The fixed, seeded set of ``N_r`` distinct training normals used at inference."""
        order = torch.randperm(len(self.pool), generator=torch.Generator().manual_seed(self.seed + 1))
        return [self.pool[int(i)] for i in order[: self.num_reference]]

    def draw(self, exclude: set[int]) -> list[int]:
        """``N_r`` distinct training normals for this step, outside ``exclude`` (the global batch) when possible.

        Seeded; identical on every rank (``exclude`` is the global batch).
        """
        candidates = [i for i in self.pool if i not in exclude]
        if len(candidates) < self.num_reference:
            if not self.warned_overlap:
                logger.warning(
                    "DRA: only %d training normals are outside the batch, fewer than num_reference=%d; the "
                    "references may include batch images.",
                    len(candidates),
                    self.num_reference,
                )
                self.warned_overlap = True
            candidates = self.pool
        order = torch.randperm(len(candidates), generator=self.generator)[: self.num_reference]
        return [candidates[int(i)] for i in order]


class DRAModel(nn.Module):
    """DRA network: shared feature extractor, four heads, two-level image pyramid.

    Every default comes from :data:`~.defaults.DEFAULTS`.

    Args:
        backbone: timm model name or local weights file (see :mod:`anomalib_hyperbolic.backbones`);
            default ``resnet18.tv_in1k``, torchvision's ImageNet ResNet-18 (the official weights).
        layer: Feature level used by the heads; ``None``: the deepest one (``layer4`` of a ResNet,
            the 512-channel map of the paper).
        pre_trained: Load ImageNet weights.
        top_k_ratio: Fraction of patches in the top-k MIL (eq. 3; 10 %).
        num_scales: Levels of the image pyramid (2).
        num_reference: ``N_r``, reference images of the residual head (eq. 6; 5).
        normality_hidden: Hidden width of the normality head (256).
    """

    def __init__(
        self,
        backbone: str | os.PathLike = DEFAULTS.backbone,
        layer: str | None = DEFAULTS.layer,
        pre_trained: bool = DEFAULTS.pre_trained,
        top_k_ratio: float = DEFAULTS.top_k_ratio,
        num_scales: int = DEFAULTS.num_scales,
        num_reference: int = DEFAULTS.num_reference,
        normality_hidden: int = DEFAULTS.normality_hidden,
    ) -> None:
        super().__init__()
        if not 0 < top_k_ratio <= 1:
            msg = f"top_k_ratio must be in (0, 1], got {top_k_ratio}."
            raise ValueError(msg)
        if num_scales < 1:
            msg = f"num_scales must be >= 1, got {num_scales}."
            raise ValueError(msg)
        if num_reference < 1:
            msg = f"num_reference must be >= 1, got {num_reference}."
            raise ValueError(msg)
        if layer is None:
            layer = feature_layer_names(resolve_backbone(backbone).arch)[-1]
        self.layer = layer
        self.feature_extractor = create_feature_extractor(
            backbone, [layer], pre_trained=pre_trained, requires_grad=True
        )
        # channels-last: the CPU's convolution kernels train the fine-tuned backbone about 1.5x faster
        # so in float32 (same weights, same graph; measured faster than bf16 autocast on Lite0)
        self.feature_extractor.to(memory_format=torch.channels_last)
        in_dim = int(self.feature_extractor.out_dims[0])
        self.in_dim = in_dim
        self.top_k_ratio = top_k_ratio
        self.num_scales = num_scales
        self.num_reference = num_reference
        self.seen_head = PatchAnomalyHead(in_dim, top_k_ratio)
        self.pseudo_head = PatchAnomalyHead(in_dim, top_k_ratio)
        self.residual_head = ResidualAnomalyHead(in_dim, top_k_ratio)
        self.normality_head = NormalityHead(in_dim, normality_hidden)
        # Lazily shaped buffers (their shape depends on the image size): see _load_from_state_dict.
        self.register_buffer("reference_images", torch.empty(0))
        for scale in range(num_scales):
            self.register_buffer(f"reference_features_{scale}", torch.empty(0))

    # -- helpers -----------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in ["reference_images", *(f"reference_features_{s}" for s in range(self.num_scales))]:
            value = state_dict.get(prefix + name)
            if isinstance(value, torch.Tensor) and value.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(value, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale(self, images: torch.Tensor, level: int) -> torch.Tensor:
        """Pyramid level ``level`` of ``images`` (side divided by ``2**level``, bilinear)."""
        if level == 0:
            return images
        size = (images.shape[-2] // 2**level, images.shape[-1] // 2**level)
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map ``(B, C, h, w)`` of the shared network."""
        return self.feature_extractor(images.contiguous(memory_format=torch.channels_last))[self.layer]

    def heads(
        self,
        features: torch.Tensor,
        reference: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Scores of the four heads and the summed abnormality patch map at one pyramid level."""
        seen, seen_map = self.seen_head(features)
        pseudo, pseudo_map = self.pseudo_head(features)
        residual, residual_map = self.residual_head(features, reference)
        normal = self.normality_head(features)
        scores = {"seen": seen, "pseudo": pseudo, "residual": residual, "normal": normal}
        return scores, seen_map + pseudo_map + residual_map

    @torch.no_grad()
    def update_reference_features(self, reference_images: torch.Tensor | None = None) -> None:
        """Store the mean reference feature map of every pyramid level as buffers (eq. 6).

        Runs the feature network in eval mode on ``reference_images`` (or the stored ones).

        Raises:
            RuntimeError: there are no reference images yet.
        """
        if reference_images is not None:
            self.reference_images = reference_images.detach().clone()
        if self.reference_images.numel() == 0:
            msg = "DRA has no reference images yet: train it (or pass reference_images) first."
            raise RuntimeError(msg)
        was_training = self.training
        self.eval()
        try:
            for level in range(self.num_scales):
                features = self.extract(self.scale(self.reference_images, level))
                setattr(self, f"reference_features_{level}", features.mean(dim=0, keepdim=True))
        finally:
            self.train(was_training)

    # -- forward -------------------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,
        reference_images: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor] | InferenceBatch:
        """Training: per-head image scores averaged over the pyramid; eval: an ``InferenceBatch``.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            reference_images: Training only: ``(N_r, 3, H, W)`` reference images, passed through the
                feature network together with ``images`` (one batch, as the official code).

        Returns:
            Training: ``{"seen", "pseudo", "residual", "normal"}`` -> ``(B,)`` scores. Eval:
            ``InferenceBatch(pred_score=(B,), anomaly_map=(B, 1, H, W))``.
        """
        if self.training:
            if reference_images is None or reference_images.shape[0] == 0:
                msg = "DRA training forward needs reference_images (N_r normal/pseudo-anomalous images)."
                raise ValueError(msg)
            num_ref = reference_images.shape[0]
            batch = torch.cat([reference_images, images], dim=0)
            per_scale: dict[str, list[torch.Tensor]] = {head: [] for head in HEADS}
            for level in range(self.num_scales):
                features = self.extract(self.scale(batch, level))
                reference = features[:num_ref].mean(dim=0, keepdim=True)
                scores, _ = self.heads(features[num_ref:], reference)
                for head in HEADS:
                    per_scale[head].append(scores[head])
            return {head: torch.stack(values, dim=1).mean(dim=1) for head, values in per_scale.items()}

        if self.reference_features_0.numel() == 0:
            msg = "DRA has no reference features: train it first (or call update_reference_features)."
            raise RuntimeError(msg)
        size = images.shape[-2:]
        image_scores: list[torch.Tensor] = []
        maps: list[torch.Tensor] = []
        for level in range(self.num_scales):
            features = self.extract(self.scale(images, level))
            reference = getattr(self, f"reference_features_{level}")
            if reference.shape[-2:] != features.shape[-2:]:
                msg = (
                    f"Reference features were computed for a {tuple(reference.shape[-2:])} feature map but the input "
                    f"gives {tuple(features.shape[-2:])}: use the image size DRA was trained with."
                )
                raise ValueError(msg)
            scores, patch_map = self.heads(features, reference)
            image_scores.append(scores["seen"] + scores["pseudo"] + scores["residual"] - scores["normal"])
            maps.append(F.interpolate(patch_map, size=size, mode="bilinear", align_corners=False))
        pred_score = torch.stack(image_scores, dim=1).mean(dim=1)
        anomaly_map = torch.stack(maps, dim=0).mean(dim=0)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
