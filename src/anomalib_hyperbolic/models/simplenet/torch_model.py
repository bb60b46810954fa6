"""SimpleNet (Liu et al., CVPR 2023): the paper's model and nothing else.

::

    x --F_phi--> o --G_theta--> q --D_psi--> normality        (eqs. 4, 5 and section 3.4)
                                q- = q + eps, eps ~ N(0, sigma^2 I)    (eq. 6, training only)
    s = -D_psi(q) per location -> upsampled, blurred map; image score max s   (eqs. 9-11)

* ``F_phi``: :class:`~.feature_extractor.SimpleNetFeatureExtractor` (eqs. 1-4, frozen backbone).
* ``G_theta``: one bias-free linear layer, equal in/out dims (eq. 5).
* ``D_psi``: :class:`Discriminator`, ``Linear -> BatchNorm1d -> LeakyReLU(0.2) -> Linear``.
* Training (Algorithm 1): :meth:`SimpleNetModel.forward` in training mode returns the discriminator's
  scores of ``q`` and ``q-`` per head (:class:`HeadScores`); the truncated L1 loss of eqs. (7)-(8)
  (:class:`~.loss.TruncatedL1Loss`) takes them, in :meth:`SimpleNet.training_step
  <anomalib_hyperbolic.models.simplenet.lightning_model.SimpleNet.training_step>`.

:meth:`~SimpleNetModel.standardize`, :meth:`~SimpleNetModel.heads`, :meth:`~SimpleNetModel.anomalous`,
:meth:`~SimpleNetModel.new_head` and :meth:`~SimpleNetModel.patch_scores` are the places where the
options beyond the paper plug in (:mod:`.extensions`, :mod:`.poincare`); this class knows none of them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.models.components import GaussianBlur2d
from torch import nn

from .defaults import DEFAULTS, IMAGE_SCORES, require_choice, require_positive_int
from .feature_extractor import AdaptiveAvgPoolChannels, SimpleNetFeatureExtractor

__all__ = [
    "AdaptiveAvgPoolChannels",
    "Discriminator",
    "HeadScores",
    "SimpleNetFeatureExtractor",
    "SimpleNetModel",
    "init_linear",
]

Head = tuple[nn.Linear, "Discriminator"]


class HeadScores(NamedTuple):
    """One head's discriminator outputs on a training batch: what the loss of eqs. (7)-(8) takes.

    ``normal`` is ``D(q)`` of every normal feature, ``(N,)``; ``anomalous`` is ``D(q-)``: first the
    ``N`` features with eq. (6)'s noise, then (with synthetic defects) the ``M`` synthetic-defect
    features, ``(N + M,)``. All came from one discriminator batch (as in the official code, the
    batch-norm statistics cover every feature).
    """

    normal: torch.Tensor
    anomalous: torch.Tensor

    @property
    def noisy(self) -> torch.Tensor:
        """``D(q + eps)`` of the eq. (6) anomalous features, ``(N,)``."""
        return self.anomalous[: len(self.normal)]

    @property
    def synthetic(self) -> torch.Tensor:
        """``D`` of the synthetic-defect features, ``(M,)`` (empty without them)."""
        return self.anomalous[len(self.normal) :]


def init_linear(module: nn.Module) -> None:
    """Xavier-normal initialisation of linear weights (as in the official code)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)


class Discriminator(nn.Module):
    """Discriminator ``D_psi`` (sections 3.4 and 4.3): ``Linear -> BatchNorm1d -> LeakyReLU -> Linear``.

    Subclasses may replace the first layer (:meth:`build_input_layer`, :meth:`project`).

    Args:
        in_dim: Feature dimension ``C``.
        hidden: Width of the hidden layer (1024 in the official run script).
        negative_slope: LeakyReLU slope (0.2).
    """

    def __init__(self, in_dim: int, hidden: int, negative_slope: float) -> None:
        super().__init__()
        self.build_input_layer(in_dim, hidden)
        self.body = nn.Sequential(nn.BatchNorm1d(hidden), nn.LeakyReLU(negative_slope))
        self.tail = nn.Linear(hidden, 1, bias=False)
        self.apply(init_linear)

    def build_input_layer(self, in_dim: int, hidden: int) -> None:
        """The first layer: ``Linear(in_dim, hidden)``."""
        self.input_layer = nn.Linear(in_dim, hidden)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """First layer, ``(N, in_dim) -> (N, hidden)``."""
        return self.input_layer(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, in_dim) -> (N,)`` normality scores."""
        return self.tail(self.body(self.project(features))).squeeze(-1)


class SimpleNetModel(nn.Module):
    """SimpleNet: feature extractor, adaptor, anomalous feature generator and discriminator.

    Every default comes from :data:`~.defaults.DEFAULTS`.

    Args:
        backbone: timm name or local weights file. Paper: WideResNet-50 (torchvision V1 weights).
        layers: Backbone levels. Paper: levels 2 and 3.
        pre_trained: Load ImageNet backbone weights.
        patch_size: Neighbourhood size ``p`` of eq. (1) (odd, >= 1). Paper: 3.
        pretrain_embed_dim: Per-level channels after aggregation. Official code: 1536.
        target_embed_dim: Feature dimension ``C`` of ``o`` and ``q``. Paper: 1536.
        adaptor_bias: Bias in the adaptor ``G_theta``. Paper: none (the official code has one).
        noise_std: ``sigma`` of eq. (6). Paper: 0.015.
        discriminator_hidden: Hidden width of ``D_psi``. Official code: 1024.
        negative_slope: LeakyReLU slope of ``D_psi``. Paper: 0.2.
        blur_sigma: Gaussian blur of the anomaly map (section 3.6). Paper: 4.
        image_score: ``"patch_max"``: max of the feature-grid scores, eq. (11) and the official
            code; ``"map_max"``: max of the upsampled, blurred map.
    """

    def __init__(
        self,
        backbone: str | os.PathLike = DEFAULTS.backbone,
        layers: Sequence[str] = DEFAULTS.layers,
        pre_trained: bool = DEFAULTS.pre_trained,
        patch_size: int = DEFAULTS.patch_size,
        pretrain_embed_dim: int = DEFAULTS.pretrain_embed_dim,
        target_embed_dim: int = DEFAULTS.target_embed_dim,
        adaptor_bias: bool = DEFAULTS.adaptor_bias,
        noise_std: float = DEFAULTS.noise_std,
        discriminator_hidden: int = DEFAULTS.discriminator_hidden,
        negative_slope: float = DEFAULTS.negative_slope,
        blur_sigma: float = DEFAULTS.blur_sigma,
        image_score: str = DEFAULTS.image_score,
    ) -> None:
        super().__init__()
        if not math.isfinite(noise_std) or noise_std <= 0:
            msg = f"`noise_std` (sigma of SimpleNet eq. 6) must be > 0, got {noise_std!r}."
            raise ValueError(msg)
        if not math.isfinite(blur_sigma) or blur_sigma <= 0:
            msg = f"`blur_sigma` must be > 0, got {blur_sigma!r}."
            raise ValueError(msg)
        require_positive_int("discriminator_hidden", discriminator_hidden)
        require_choice("image_score", image_score, IMAGE_SCORES)
        self.feature_extractor = SimpleNetFeatureExtractor(
            backbone, layers, pre_trained, patch_size, pretrain_embed_dim, target_embed_dim
        )
        self.embed_dim = target_embed_dim
        self.adaptor_bias = adaptor_bias
        self.discriminator_hidden = discriminator_hidden
        self.negative_slope = negative_slope
        self.noise_std = noise_std
        self.image_score = image_score
        self.adaptor, self.discriminator = self.new_head()
        kernel_size = 2 * int(4.0 * blur_sigma + 0.5) + 1  # scipy.ndimage.gaussian_filter's truncate=4
        self.blur = GaussianBlur2d(kernel_size=(kernel_size, kernel_size), sigma=(blur_sigma, blur_sigma), channels=1)

    def new_head(self) -> Head:
        """A freshly initialised adaptor ``G_theta`` and discriminator ``D_psi``."""
        # SimpleNet eq. (5): one fully connected layer, equal in/out dims, no bias.
        adaptor = nn.Linear(self.embed_dim, self.embed_dim, bias=self.adaptor_bias)
        adaptor.apply(init_linear)
        return adaptor, Discriminator(self.embed_dim, self.discriminator_hidden, self.negative_slope)

    def heads(self) -> list[Head]:
        """The ``(adaptor, discriminator)`` pairs to train and score with: the paper has one."""
        return [(self.adaptor, self.discriminator)]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Local features ``o = F_phi(x)`` as ``(B, H0, W0, C)``, eq. (4)."""
        return self.features_of(self.feature_extractor(images))

    def features_of(self, extracted: torch.Tensor) -> torch.Tensor:
        """``(B, C, H0, W0)`` extractor output (live or cached) -> ``(B, H0, W0, C)`` features ``o``."""
        return self.standardize(extracted.permute(0, 2, 3, 1))

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """Channel-last features as the adaptor takes them: unchanged in the paper's model."""
        return features

    def anomalous(self, adapted: torch.Tensor) -> torch.Tensor:
        """Anomalous features ``q- = q + eps``, ``eps ~ N(0, sigma^2 I)``, eq. (6) (training only)."""
        return adapted + torch.randn_like(adapted) * self.noise_std

    def normality(self, adapted: torch.Tensor, discriminator: Discriminator) -> torch.Tensor:
        """``D_psi(q)`` per feature, ``(..., C) -> (...)``."""
        return discriminator(adapted.reshape(-1, adapted.shape[-1])).reshape(adapted.shape[:-1])

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Anomaly score ``s = -D_psi(G_theta(o))`` per location, ``(B, H0, W0, C) -> (B, H0, W0)``, eq. (9)."""
        return -self.normality(self.adaptor(features), self.discriminator)

    def predictions(self, patch_scores: torch.Tensor, image_size: tuple[int, int]) -> InferenceBatch:
        """Anomaly maps and image scores from ``(B, H0, W0)`` patch scores, eqs. (10)-(11)."""
        patch_scores = patch_scores.unsqueeze(1)  # SimpleNet eq. (10): the map over the feature grid
        anomaly_map = F.interpolate(patch_scores, size=image_size, mode="bilinear", align_corners=False)
        anomaly_map = self.blur(anomaly_map)  # section 3.6: upsampled and Gaussian-filtered
        source = patch_scores if self.image_score == "patch_max" else anomaly_map
        return InferenceBatch(pred_score=source.flatten(1).amax(dim=1), anomaly_map=anomaly_map)  # SimpleNet eq. (11)

    def training_scores(
        self, features: torch.Tensor, synthetic: Sequence[torch.Tensor] | None = None
    ) -> list[HeadScores]:
        """Algorithm 1 for every head on features ``o``: adapt (eq. 5), add noise (eq. 6), discriminate.

        Every head gets the same normal features, its own draw of the eq. (6) noise and (with
        synthetic defects) ``synthetic[k]``, head ``k``'s ``(M, C)`` features of synthetic-defect cells.

        Args:
            features: ``(B, H0, W0, C)`` features ``o`` of the training images.
            synthetic: Per head, extra anomalous features (beyond the paper); ``None``: the paper's noise only.
        """
        scores = []
        for index, (adaptor, discriminator) in enumerate(self.heads()):
            adapted = adaptor(features).flatten(0, -2)  # q = G(o), SimpleNet eq. (5)
            anomalous = [self.anomalous(adapted)]  # q- = q + eps, SimpleNet eq. (6)
            if synthetic is not None:
                anomalous.append(adaptor(synthetic[index]))
            # one discriminator batch, as in the official code: batch-norm statistics cover every feature
            normality = self.normality(torch.cat([adapted, *anomalous]), discriminator)
            scores.append(HeadScores(normality[: len(adapted)], normality[len(adapted) :]))
        return scores

    def forward(
        self,
        images: torch.Tensor,
        extract: Callable[[torch.Tensor], torch.Tensor] | None = None,
        synthetic: Sequence[torch.Tensor] | None = None,
    ) -> InferenceBatch | list[HeadScores]:
        """Eval: image scores and anomaly maps, eqs. (9)-(11). Training: each head's :class:`HeadScores`.

        Args:
            images: ``(B, 3, H, W)`` pre-processed images.
            extract: Training only: stands in for the frozen :attr:`feature_extractor` (e.g. a
                :class:`~anomalib_hyperbolic.feature_cache.FeatureCache` of it); same output.
            synthetic: Training only: per head, synthetic-defect features (see :meth:`training_scores`).
        """
        if self.training:
            features = self.features_of((self.feature_extractor if extract is None else extract)(images))
            return self.training_scores(features, synthetic)
        return self.predictions(self.patch_scores(self.features(images)), images.shape[-2:])
