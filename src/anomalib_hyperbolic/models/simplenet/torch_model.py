"""PyTorch model of SimpleNet (Liu et al., CVPR 2023), with an optional Poincaré-ball variant.

Pipeline (paper section 3, equation numbers in comments):

1. Feature extractor ``F_phi`` (eqs. 1-4): frozen backbone levels, each location's ``p x p``
   neighbourhood aggregated by adaptive average pooling to ``pretrain_embed_dim`` channels,
   levels bilinearly resized to the largest level's grid and merged by a second adaptive
   average pooling to ``target_embed_dim`` channels (the official code's "preprocessing" and
   "pre-adapt aggregator" steps).
2. Feature adaptor ``G_theta`` (eq. 5): one bias-free linear layer, equal in/out dims. Optionally
   (``feature_standardization``, beyond the paper) the features are first standardised per channel
   with training-set statistics, so that ``sigma`` is in units of each channel's spread.
3. Anomalous feature generator (eq. 6, training only): ``q- = q + eps``, ``eps ~ N(0, sigma^2 I)``.
4. Discriminator ``D_psi``: ``Linear -> BatchNorm1d -> LeakyReLU(0.2) -> Linear``; normality per location.
5. Inference: ``s = -D(q)`` (eq. 9), the map upsampled to the input size and Gaussian-blurred
   (sigma 4, eq. 10 and section 3.6), image score ``max_{h,w} s`` (eq. 11).

``distance="poincare"`` (beyond the paper) maps the adapted features onto the Poincaré ball,
draws the anomalous features from a wrapped normal around each feature (noise in the tangent
space at the feature, see :meth:`SimpleNetModel.generate_anomalous`) and feeds the discriminator
either log-mapped features or geodesic distances to learned prototypes on the ball.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.models.components import GaussianBlur2d
from torch import nn

from anomalib_hyperbolic.backbones import create_feature_extractor
from anomalib_hyperbolic.geometry import expmap, expmap0, logmap0, pairwise_poincare_distance, validate_curvature
from anomalib_hyperbolic.models.components import ChannelMoments

DISTANCES = ("euclidean", "poincare")
DISCRIMINATOR_INPUTS = ("logmap", "distance")
IMAGE_SCORES = ("patch_max", "map_max")


def _init_linear(module: nn.Module) -> None:
    """Xavier-normal initialisation of linear weights (as in the official code)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)


class AdaptiveAvgPoolChannels(nn.Module):
    """``F.adaptive_avg_pool1d`` over the channel axis of a ``(B, C, H, W)`` map, as a fixed gather.

    Output channel ``i`` is the mean of input channels ``floor(i C / D) .. ceil((i + 1) C / D) - 1``
    (PyTorch's adaptive pooling bins, also when ``D > C``). The bins are stored as an index and a
    weight buffer, so the module exports to ONNX/OpenVINO for any ``C``/``D`` (ONNX has no
    adaptive pooling with arbitrary output size).

    Args:
        in_channels: ``C``.
        out_channels: ``D``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            msg = f"Channel counts must be positive, got in_channels={in_channels}, out_channels={out_channels}."
            raise ValueError(msg)
        starts = [(i * in_channels) // out_channels for i in range(out_channels)]
        ends = [-((-(i + 1) * in_channels) // out_channels) for i in range(out_channels)]
        width = max(end - start for start, end in zip(starts, ends, strict=True))
        index = torch.zeros(out_channels, width, dtype=torch.long)
        weight = torch.zeros(out_channels, width)
        for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
            index[i, : end - start] = torch.arange(start, end)
            weight[i, : end - start] = 1.0 / (end - start)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.width = width
        self.uniform = in_channels % out_channels == 0
        self.register_buffer("index", index.flatten(), persistent=False)
        self.register_buffer("weight", weight.view(1, out_channels, width, 1, 1), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, C, H, W)`` to ``(B, D, H, W)``."""
        batch, _, height, width = features.shape
        if self.uniform:  # contiguous equal bins: a reshape and a mean
            return features.reshape(batch, self.out_channels, self.width, height, width).mean(dim=2)
        gathered = features.index_select(1, self.index).reshape(batch, self.out_channels, self.width, height, width)
        return (gathered * self.weight).sum(dim=2)


class SimpleNetFeatureExtractor(nn.Module):
    """Feature extractor ``F_phi`` of SimpleNet, eqs. (1)-(4).

    For every level ``l``: the ``p x p`` neighbourhood of each location (zero padded, eq. 1) is
    flattened channel-major (``C_l * p * p`` values) and adaptive-average-pooled to
    ``pretrain_embed_dim`` values (eq. 2, ``f_agg``); levels are resized bilinearly to the largest
    level's grid ``(H0, W0)`` and concatenated (eq. 3), and the concatenation is adaptive-average-
    pooled to ``target_embed_dim`` channels. This is the official implementation's order of
    operations except that pooling happens before resizing: both are linear, one acts across
    channels and the other across locations, so they commute exactly and pooling first is cheaper.

    Args:
        backbone: timm name or local weights file (see :mod:`anomalib_hyperbolic.backbones`).
        layers: Backbone levels to use.
        pre_trained: Load ImageNet weights.
        patch_size: Neighbourhood size ``p`` (odd, >= 1).
        pretrain_embed_dim: Channels per level after neighbourhood aggregation.
        target_embed_dim: Channels of the merged feature map ``o``.
    """

    def __init__(
        self,
        backbone: str | os.PathLike,
        layers: Sequence[str],
        pre_trained: bool,
        patch_size: int,
        pretrain_embed_dim: int,
        target_embed_dim: int,
    ) -> None:
        super().__init__()
        self.layers = list(layers)
        self.patch_size = patch_size
        self.feature_extractor = create_feature_extractor(backbone, self.layers, pre_trained=pre_trained)
        self.feature_extractor.eval()
        channels = self.feature_extractor.out_dims
        self.level_pools = nn.ModuleList(
            AdaptiveAvgPoolChannels(c * patch_size * patch_size, pretrain_embed_dim) for c in channels
        )
        self.merge_pool = AdaptiveAvgPoolChannels(pretrain_embed_dim * len(channels), target_embed_dim)
        self.out_dim = target_embed_dim

    def train(self, mode: bool = True) -> SimpleNetFeatureExtractor:
        """Keep the frozen backbone in eval mode (batch-norm statistics stay ImageNet's)."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    def neighbourhoods(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C * p * p, H, W)``: each location's zero-padded ``p x p`` neighbourhood, eq. (1).

        Channel-major like ``nn.Unfold`` (channel ``c``, then row, then column), built from static
        slices so that it exports everywhere.
        """
        p = self.patch_size
        if p == 1:
            return features
        pad = p // 2
        height, width = features.shape[-2:]
        padded = F.pad(features, (pad, pad, pad, pad))
        shifted = [padded[:, :, i : i + height, j : j + width] for i in range(p) for j in range(p)]
        stacked = torch.stack(shifted, dim=2)  # (B, C, p*p, H, W)
        return stacked.flatten(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Local features ``o`` of shape ``(B, target_embed_dim, H0, W0)``, eq. (4)."""
        with torch.no_grad():
            levels = self.feature_extractor(images)
        pooled = [
            pool(self.neighbourhoods(levels[name])) for name, pool in zip(self.layers, self.level_pools, strict=True)
        ]
        size = max((level.shape[-2:] for level in pooled), key=lambda s: s[0] * s[1])
        resized = [
            level if level.shape[-2:] == size else F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            for level in pooled
        ]
        return self.merge_pool(torch.cat(resized, dim=1))


class Discriminator(nn.Module):
    """Discriminator ``D_psi``: ``Linear -> BatchNorm1d -> LeakyReLU -> Linear`` (section 4.3).

    With ``first_layer="distance"`` (hyperbolic variant) the first linear layer is replaced by the
    geodesic distances from the input point (on the Poincaré ball) to ``hidden`` learned prototypes
    ``exp_0(w_k)`` (an RBF-like layer of the ball); the rest is unchanged.

    Args:
        in_dim: Feature dimension.
        hidden: Width of the hidden layer (1024 in the official run script).
        negative_slope: LeakyReLU slope (0.2).
        first_layer: ``"linear"`` or ``"distance"``.
        curvature: Ball curvature for ``first_layer="distance"``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int = 1024,
        negative_slope: float = 0.2,
        first_layer: str = "linear",
        curvature: float = 0.0,
    ) -> None:
        super().__init__()
        self.first_layer = first_layer
        self.curvature = curvature
        if first_layer == "linear":
            self.input_layer = nn.Linear(in_dim, hidden)
        else:
            self.input_layer = None
            # Prototypes in the tangent space at the origin; spread like typical features.
            self.prototypes = nn.Parameter(torch.randn(hidden, in_dim) / math.sqrt(in_dim))
        self.body = nn.Sequential(nn.BatchNorm1d(hidden), nn.LeakyReLU(negative_slope))
        self.tail = nn.Linear(hidden, 1, bias=False)
        self.apply(_init_linear)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, in_dim) -> (N,)`` normality scores."""
        if self.input_layer is not None:
            hidden = self.input_layer(features)
        else:
            hidden = pairwise_poincare_distance(features, expmap0(self.prototypes, self.curvature), self.curvature)
        return self.tail(self.body(hidden)).squeeze(-1)


class SimpleNetModel(nn.Module):
    """SimpleNet: feature extractor, adaptor, anomalous feature generator and discriminator.

    Args:
        backbone: timm name or local weights file. Paper: WideResNet-50.
        layers: Backbone levels. Paper: levels 2 and 3.
        pre_trained: Load ImageNet backbone weights.
        patch_size: Neighbourhood size ``p`` of eq. (1) (odd, >= 1). Paper: 3.
        pretrain_embed_dim: Per-level channels after aggregation. Official code: 1536.
        target_embed_dim: Feature dimension ``C`` of ``o`` and ``q``. Paper: 1536.
        adaptor_bias: Bias in the adaptor ``G_theta``. Paper: none (the official code has one).
        noise_std: ``sigma`` of eq. (6). Paper: 0.015.
        relative_noise: Scale ``sigma`` by each feature's root-mean-square entry (detached), so the
            noise level follows the backbone's feature scale. Paper: ``False`` (absolute ``sigma``,
            tuned for WideResNet-50 features).
        feature_standardization: Standardise ``o`` per channel with the training set's mean and
            standard deviation (:meth:`fit_feature_statistics`) before the adaptor. The isotropic
            noise of eq. (6) then has the same size relative to every channel's spread, whatever
            the backbone. Paper: ``False``.
        discriminator_hidden: Hidden width of ``D_psi``. Official code: 1024.
        negative_slope: LeakyReLU slope of ``D_psi``. Paper: 0.2.
        blur_sigma: Gaussian blur of the anomaly map (section 3.6). Paper: 4.
        image_score: ``"patch_max"``: max of the feature-grid scores, eq. (11) and the official
            code; ``"map_max"``: max of the upsampled, blurred map.
        distance: ``"euclidean"`` (paper) or ``"poincare"``.
        curvature: Ball curvature ``c`` for ``distance="poincare"`` (> 0 there; 0 gives Euclidean formulas).
        discriminator_input: For ``"poincare"``: ``"logmap"`` (``D`` sees ``log_0`` of the points)
            or ``"distance"`` (``D``'s first layer is geodesic distances to learned prototypes).
        ensemble_size: Beyond the paper: the number ``K`` of independently initialised
            adaptor/discriminator pairs ("heads") on the one frozen feature extractor. Each head is
            trained on the same batches with its own noise draws and its own loss; the anomaly score
            is the mean of their scores, ``s = -(1/K) sum_k D_k(G_k(o))``. Paper: 1 (head 0 is
            ``adaptor``/``discriminator``; heads 1.. live in ``extra_heads``).
    """

    def __init__(
        self,
        backbone: str | os.PathLike = "wide_resnet50_2",
        layers: Sequence[str] = ("layer2", "layer3"),
        pre_trained: bool = True,
        patch_size: int = 3,
        pretrain_embed_dim: int = 1536,
        target_embed_dim: int = 1536,
        adaptor_bias: bool = False,
        noise_std: float = 0.015,
        relative_noise: bool = False,
        feature_standardization: bool = False,
        discriminator_hidden: int = 1024,
        negative_slope: float = 0.2,
        blur_sigma: float = 4.0,
        image_score: str = "patch_max",
        distance: str = "euclidean",
        curvature: float = 0.01,
        discriminator_input: str = "logmap",
        ensemble_size: int = 1,
    ) -> None:
        super().__init__()
        validate_arguments(
            layers=layers,
            patch_size=patch_size,
            pretrain_embed_dim=pretrain_embed_dim,
            target_embed_dim=target_embed_dim,
            noise_std=noise_std,
            discriminator_hidden=discriminator_hidden,
            blur_sigma=blur_sigma,
            image_score=image_score,
            distance=distance,
            curvature=curvature,
            discriminator_input=discriminator_input,
            ensemble_size=ensemble_size,
        )
        self.noise_std = noise_std
        self.relative_noise = relative_noise
        self.image_score = image_score
        self.distance = distance
        self.curvature = float(curvature) if distance == "poincare" else 0.0
        self.discriminator_input = discriminator_input
        self.feature_extractor = SimpleNetFeatureExtractor(
            backbone, layers, pre_trained, patch_size, pretrain_embed_dim, target_embed_dim
        )
        self.feature_standardization = feature_standardization
        if feature_standardization:  # registered only when used: the paper model's state dict is unchanged
            self.register_buffer("feature_mean", torch.zeros(target_embed_dim))
            self.register_buffer("feature_std", torch.ones(target_embed_dim))
            self.register_buffer("feature_statistics_fitted", torch.tensor(False))
        hyperbolic_distance = distance == "poincare" and discriminator_input == "distance"

        def new_head() -> tuple[nn.Linear, Discriminator]:
            # SimpleNet eq. (5): one fully connected layer, equal in/out dims, no bias.
            adaptor = nn.Linear(target_embed_dim, target_embed_dim, bias=adaptor_bias)
            adaptor.apply(_init_linear)
            discriminator = Discriminator(
                target_embed_dim,
                hidden=discriminator_hidden,
                negative_slope=negative_slope,
                first_layer="distance" if hyperbolic_distance else "linear",
                curvature=self.curvature,
            )
            return adaptor, discriminator

        self.adaptor, self.discriminator = new_head()
        self.ensemble_size = ensemble_size
        if ensemble_size > 1:  # registered only when used: the paper model's state dict is unchanged
            self.extra_heads = nn.ModuleList(
                nn.ModuleDict(dict(zip(("adaptor", "discriminator"), new_head(), strict=True)))
                for _ in range(ensemble_size - 1)
            )
        kernel_size = 2 * int(4.0 * blur_sigma + 0.5) + 1  # scipy.ndimage.gaussian_filter's truncate=4
        self.blur = GaussianBlur2d(kernel_size=(kernel_size, kernel_size), sigma=(blur_sigma, blur_sigma), channels=1)

    # ----------------------------------------------------------------------------------------
    def extracted_features(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``o`` as ``(B, H0, W0, C)`` (eq. 4), standardised when ``feature_standardization``."""
        features = self.feature_extractor(images).permute(0, 2, 3, 1)
        if self.feature_standardization:
            features = (features - self.feature_mean) / self.feature_std
        return features

    def heads(self) -> list[tuple[nn.Linear, Discriminator]]:
        """The ``(adaptor, discriminator)`` pairs: head 0, then ``extra_heads`` (``ensemble_size`` in all)."""
        heads = [(self.adaptor, self.discriminator)]
        if self.ensemble_size > 1:
            heads += [(head["adaptor"], head["discriminator"]) for head in self.extra_heads]
        return heads

    def adapted_features(self, images: torch.Tensor) -> torch.Tensor:
        """Adapted features ``q`` of head 0 as ``(B, H0, W0, C)``: eqs. (4)-(5)."""
        return self.adaptor(self.extracted_features(images))

    @torch.no_grad()
    def fit_feature_statistics(self, image_batches: Iterable[torch.Tensor]) -> None:
        """Per-channel mean and standard deviation of ``o`` over every location of ``image_batches``.

        Sums are accumulated in float64. A channel's standard deviation is floored at 1e-3 of the
        mean standard deviation, so a (nearly) constant channel cannot blow up after division.

        Raises:
            RuntimeError: without ``feature_standardization``.
            ValueError: when ``image_batches`` is empty.
        """
        if not self.feature_standardization:
            msg = "fit_feature_statistics needs SimpleNetModel(feature_standardization=True)."
            raise RuntimeError(msg)
        moments = ChannelMoments()
        for images in image_batches:
            moments.update(self.feature_extractor(images))
        if moments.count == 0:
            msg = "Cannot fit SimpleNet's feature statistics: the training data yielded no images."
            raise ValueError(msg)
        mean, std = moments.compute()
        std = std.clamp_min(1e-3 * float(std.mean()) + 1e-12)
        self.feature_mean.copy_(mean.to(self.feature_mean))
        self.feature_std.copy_(std.to(self.feature_std))
        self.feature_statistics_fitted.fill_(True)

    def to_manifold(self, adapted: torch.Tensor) -> torch.Tensor:
        """Points the generator and discriminator work with: ``q`` itself, or ``exp_0(q)`` on the ball."""
        if self.distance == "euclidean":
            return adapted
        return expmap0(adapted, self.curvature)

    def generate_anomalous(self, points: torch.Tensor) -> torch.Tensor:
        """Anomalous features ``q-`` (eq. 6), used in training only.

        Euclidean: ``q + eps``, ``eps ~ N(0, sigma^2 I)``. Poincaré: a wrapped normal around each
        point ``x`` -- ``eps`` drawn in the tangent space at the origin, parallel-transported to
        ``x`` (scaled by ``lambda_0 / lambda_x``) and mapped with ``exp_x``, so every anomalous
        point lies at geodesic distance ``2 ||eps||`` from its normal feature whatever ``x``'s
        position, and the construction equals ``x + eps`` as ``c -> 0``.

        With ``relative_noise`` the standard deviation is ``sigma`` times the RMS entry of the
        feature (of ``log_0(x)`` on the ball), computed without gradient.
        """
        noise = torch.randn_like(points) * self.noise_std
        if self.relative_noise:
            tangent = points if self.distance == "euclidean" else logmap0(points, self.curvature)
            noise = noise * tangent.detach().pow(2).mean(-1, keepdim=True).sqrt()
        if self.distance == "euclidean":
            return points + noise
        lam = 2.0 / (1.0 - self.curvature * points.pow(2).sum(-1, keepdim=True)).clamp_min(1e-6)
        return expmap(points, noise * (2.0 / lam), self.curvature)

    def discriminate(self, points: torch.Tensor, discriminator: Discriminator | None = None) -> torch.Tensor:
        """Normality ``D_psi`` per feature, ``(..., C) -> (...)``, by head 0's discriminator unless one is given."""
        shape = points.shape[:-1]
        flat = points.reshape(-1, points.shape[-1])
        if self.distance == "poincare" and self.discriminator_input == "logmap":
            flat = logmap0(flat, self.curvature)
        return (self.discriminator if discriminator is None else discriminator)(flat).reshape(shape)

    def training_scores(
        self,
        images: torch.Tensor,
        synthetic_images: torch.Tensor | None = None,
        synthetic_masks: torch.Tensor | None = None,
        min_coverage: float = 0.5,
        synthetic_per_head: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`head_training_scores` concatenated head after head, ``(N,)`` and ``(M,)``."""
        per_head = self.head_training_scores(
            images, synthetic_images, synthetic_masks, min_coverage, synthetic_per_head
        )
        return torch.cat([normal for normal, _ in per_head]), torch.cat([anomalous for _, anomalous in per_head])

    def head_training_scores(
        self,
        images: torch.Tensor,
        synthetic_images: torch.Tensor | None = None,
        synthetic_masks: torch.Tensor | None = None,
        min_coverage: float = 0.5,
        synthetic_per_head: bool = False,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each head's ``D`` of the normal features and of the anomalous ones, flattened, in head order.

        The anomalous features are the Gaussian ones of eq. (6) and, when ``synthetic_images`` (images
        with synthetic defects, beyond the paper) and their ``(B, 1, H, W)`` masks are given, the
        features of every grid location whose cell the mask covers by more than ``min_coverage``
        (a fraction in ``[0, 1)``; 0 takes every cell the mask touches).

        With ``synthetic_per_head`` the synthetic images are split into ``ensemble_size`` equal
        consecutive groups, and head ``k`` sees only group ``k``; otherwise every head sees them all.
        """
        if not 0 <= min_coverage < 1:
            msg = f"min_coverage (share of a grid cell) must be in [0, 1), got {min_coverage!r}."
            raise ValueError(msg)
        if synthetic_images is not None and (
            synthetic_masks is None or synthetic_masks.shape[0] != synthetic_images.shape[0]
        ):
            msg = "synthetic_images need one (1, H, W) mask each (synthetic_masks)."
            raise ValueError(msg)
        if synthetic_per_head and (synthetic_images is None or synthetic_images.shape[0] % self.ensemble_size):
            msg = (
                f"synthetic_per_head needs synthetic_images in {self.ensemble_size} equal groups (one per head), got "
                f"{None if synthetic_images is None else synthetic_images.shape[0]} images."
            )
            raise ValueError(msg)
        # one backbone call for both (the frozen backbone is in eval mode: batch-independent features)
        batch = images if synthetic_images is None else torch.cat([images, synthetic_images])
        extracted = self.extracted_features(batch)
        covered = None
        if synthetic_images is not None:  # the check above guarantees its masks
            covered = F.adaptive_avg_pool2d(synthetic_masks.float(), extracted.shape[1:3])[:, 0] > min_coverage
        return self._head_training_scores(extracted, images.shape[0], covered, synthetic_per_head)

    def _head_training_scores(
        self,
        extracted: torch.Tensor,
        num_normal: int,
        covered: torch.Tensor | None,
        synthetic_per_head: bool = False,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every head's ``(D(normal), D(anomalous))``, in head order.

        ``extracted``: ``(B, H0, W0, C)`` features of the ``num_normal`` normal images followed by the
        synthetic ones; ``covered``: the synthetic images' covered grid cells, ``(B - num_normal, H0, W0)``.
        With ``synthetic_per_head``, head ``k`` gets the ``k``-th of ``ensemble_size`` equal groups of them.
        """
        heads = self.heads()
        synthetic_features = extracted[num_normal:]
        if covered is None:
            groups = [(synthetic_features, None)] * len(heads)
        elif synthetic_per_head:
            groups = list(
                zip(synthetic_features.chunk(len(heads)), covered.chunk(len(heads)), strict=True)  # checked divisible
            )
        else:
            groups = [(synthetic_features, covered)] * len(heads)
        scores = []
        for (adaptor, discriminator), (features, cells) in zip(heads, groups, strict=True):
            normal_points = self.to_manifold(adaptor(extracted[:num_normal]))
            synthetic = None if cells is None else self.to_manifold(adaptor(features[cells]))
            scores.append(self._discriminate_training(normal_points.flatten(0, -2), synthetic, discriminator))
        return scores

    def _discriminate_training(
        self, normal: torch.Tensor, synthetic: torch.Tensor | None = None, discriminator: Discriminator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(D(normal), D(anomalous))`` for ``(N, C)`` normal points: eq. (6) noise plus ``synthetic`` ones.

        All points go through the discriminator (head 0's unless one is given) in one batch (as in the
        official code, so batch-norm statistics cover normal and anomalous features alike).
        """
        anomalous = [self.generate_anomalous(normal)] + ([synthetic] if synthetic is not None else [])
        scores = self.discriminate(torch.cat([normal, *anomalous]), discriminator)
        return scores[: normal.shape[0]], scores[normal.shape[0] :]

    def forward(self, images: torch.Tensor) -> InferenceBatch | tuple[torch.Tensor, torch.Tensor]:
        """Training: ``(D(q), D(q-))`` per location, ``(K * B, H0, W0)`` each for ``K`` heads. Eval: scores and maps."""
        extracted = self.extracted_features(images)
        if self.training:
            per_head = self._head_training_scores(extracted, images.shape[0], None)
            grid = extracted.shape[1:3]
            return tuple(torch.cat(scores).view(-1, *grid) for scores in zip(*per_head, strict=True))
        # SimpleNet eq. (9): anomaly score is the negated normality (the heads' mean with ensemble_size > 1);
        # eq. (10): the map over the grid.
        normality = [
            self.discriminate(self.to_manifold(adaptor(extracted)), discriminator)
            for adaptor, discriminator in self.heads()
        ]
        patch_scores = -(normality[0] if len(normality) == 1 else torch.stack(normality).mean(0)).unsqueeze(1)
        anomaly_map = F.interpolate(patch_scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
        anomaly_map = self.blur(anomaly_map)
        # SimpleNet eq. (11): image score is the maximum score.
        source = patch_scores if self.image_score == "patch_max" else anomaly_map
        pred_score = source.flatten(1).amax(dim=1)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)


def validate_arguments(
    layers: Sequence[str],
    patch_size: int,
    pretrain_embed_dim: int,
    target_embed_dim: int,
    noise_std: float,
    discriminator_hidden: int,
    blur_sigma: float,
    image_score: str,
    distance: str,
    curvature: float,
    discriminator_input: str,
    ensemble_size: int = 1,
) -> None:
    """Raise ``ValueError`` naming the offending SimpleNet argument (layer names are checked by the backbone)."""
    if isinstance(layers, str) or len(layers) == 0:
        msg = f"`layers` must be a non-empty list of layer names, got {layers!r}."
        raise ValueError(msg)
    if not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
        msg = f"`patch_size` must be an odd integer >= 1 (neighbourhood centred on each location), got {patch_size!r}."
        raise ValueError(msg)
    for name, value in (
        ("pretrain_embed_dim", pretrain_embed_dim),
        ("target_embed_dim", target_embed_dim),
        ("discriminator_hidden", discriminator_hidden),
        ("ensemble_size", ensemble_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = f"`{name}` must be a positive integer, got {value!r}."
            raise ValueError(msg)
    if not math.isfinite(noise_std) or noise_std <= 0:
        msg = f"`noise_std` (sigma of SimpleNet eq. 6) must be > 0, got {noise_std!r}."
        raise ValueError(msg)
    if not math.isfinite(blur_sigma) or blur_sigma <= 0:
        msg = f"`blur_sigma` must be > 0, got {blur_sigma!r}."
        raise ValueError(msg)
    if image_score not in IMAGE_SCORES:
        msg = f"`image_score` must be one of {IMAGE_SCORES}, got {image_score!r}."
        raise ValueError(msg)
    if distance not in DISTANCES:
        msg = f"`distance` must be one of {DISTANCES}, got {distance!r}."
        raise ValueError(msg)
    if discriminator_input not in DISCRIMINATOR_INPUTS:
        msg = f"`discriminator_input` must be one of {DISCRIMINATOR_INPUTS}, got {discriminator_input!r}."
        raise ValueError(msg)
    try:
        validate_curvature(curvature, "curvature")
    except (TypeError, ValueError) as error:
        msg = f"`curvature` must be a finite number >= 0, got {curvature!r}."
        raise ValueError(msg) from error
    if distance == "poincare" and curvature == 0:
        msg = "`curvature` must be > 0 with distance='poincare' (0 is the Euclidean model: use distance='euclidean')."
        raise ValueError(msg)
