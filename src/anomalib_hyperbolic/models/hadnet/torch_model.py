"""HADNet torch model: hyperbolic space transformation, AFSS, reconstruction and ARD.

Pipeline (paper Fig. 3; RealNet's AFS/RRS design with a hyperbolic space transformation):

1. Frozen multi-scale backbone features ``phi_i`` (``i`` = layer).
2. HST (eqs. 3, 5-7): per pixel, the features of a layer are standardised with statistics of
   normal training images, scaled to unit expected norm, clipped (radius 2.3) and mapped onto
   the Poincaré ball of curvature ``-rho`` with ``expmap0``. A learned Poincaré hyperplane per
   layer gives the hyperbolic distance map ``d_rho(z, H^c)`` used as AFSS target.
3. AFSS (eqs. 8-10): the ``r_i`` channels of layer ``i`` with the lowest AFSS loss are kept
   (fixed indices in buffers, chosen once before training by :meth:`HADNetModel.afss_channel_losses`).
4. Reconstruction: a small autoencoder per layer; residual ``gamma_i = (phi_i - Phi_i)^2``.
5. ARD (eqs. 11-13): residuals upsampled to the finest resolution and concatenated (``Gamma``),
   per image the ``s/2`` channels with the largest GMP and the ``s/2`` with the largest GAP are
   gathered (``Lambda``) and a discriminator (segmentation head) gives the anomaly map; the
   image score is the maximum of the box-filtered map.

Every step at inference is a static tensor op (index_select with buffers, topk, gather), so the
model exports to ONNX and OpenVINO.

This package's options beyond the paper (issue 32's design study, defaults = the paper's path) plug in
as modules: :class:`FixedOrderContext` adds the selected features and signed residuals to the
discriminator's input (``discriminator_input``), :class:`RealNetDiscriminator` is a deeper head
(``discriminator_head``), and ``train_backbone`` lets the backbone take gradients.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_hyperbolic.backbones import backbone_normalization, create_feature_extractor, resolve_backbone
from anomalib_hyperbolic.geometry import (
    clip_features,
    expmap0,
    poincare_hyperplane_distance,
    validate_clip_radius,
    validate_curvature,
)
from anomalib_hyperbolic.models.components import ChannelMoments

from .defaults import DEFAULTS, PAPER_MEAN, PAPER_STD
from .loss import hyperplane_loss

__all__ = [
    "DISCRIMINATOR_HEADS",
    "DISCRIMINATOR_INPUTS",
    "PAPER_MEAN",
    "PAPER_STD",
    "Discriminator",
    "FeatureAutoencoder",
    "FixedOrderContext",
    "HADNetModel",
    "RealNetDiscriminator",
    "StageOneBatch",
]

#: the values of ``discriminator_input``: the paper's ARD residuals, or those plus fixed-order context
DISCRIMINATOR_INPUTS = ("ranked_residuals", "residuals_and_features")
#: the values of ``discriminator_head``
DISCRIMINATOR_HEADS = ("plain", "realnet")

Levels = list[torch.Tensor]  # the frozen backbone's feature maps phi_i, one per layer


def image_normalization(
    backbone: str | os.PathLike,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """HADNet's image ``(mean, std)``: explicit values win; ``None`` follows the backbone.

    The paper's :data:`PAPER_MEAN`/:data:`PAPER_STD` were given for its backbone, so they are the
    default for the paper's architecture (``wide_resnet50_2``, any weights tag, name or local file);
    any other backbone is normalised with its own training statistics
    (:func:`~anomalib_hyperbolic.backbones.backbone_normalization`, e.g. 0.5/0.5 for EfficientNet-Lite0).
    """
    if mean is None or std is None:
        paper_arch = DEFAULTS.backbone.split(".")[0]
        if resolve_backbone(backbone).arch.split(".")[0] == paper_arch:
            default_mean, default_std = PAPER_MEAN, PAPER_STD
        else:
            default_mean, default_std = backbone_normalization(backbone)
        mean = default_mean if mean is None else mean
        std = default_std if std is None else std
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)


def resolve_num_selected(
    num_selected: int | Sequence[int], channels: Sequence[int], layers: Sequence[str]
) -> list[int]:
    """Check the AFSS sizes ``r`` (one int for all layers or one per layer) against the layer widths.

    Raises:
        ValueError: ``r`` has the wrong length, is < 1, or exceeds a layer's channel count.
    """
    values = [num_selected] * len(channels) if isinstance(num_selected, int) else list(num_selected)
    if len(values) != len(channels):
        msg = f"`num_selected` (r) needs one value per layer {list(layers)}, got {list(values)}."
        raise ValueError(msg)
    for layer, value, width in zip(layers, values, channels, strict=True):
        if not isinstance(value, int) or value < 1 or value > width:
            msg = (
                f"`num_selected` (r) for layer {layer!r} must be an int in [1, {width}] "
                f"(the layer has {width} channels), got {value!r}."
            )
            raise ValueError(msg)
    return values


def validate_num_residuals(num_residuals: int, total: int) -> int:
    """Check the ARD size ``s``: even (``s/2`` from GMP and ``s/2`` from GAP) and at most the channel total.

    Raises:
        ValueError: ``s`` is odd, < 2 or larger than ``sum(r)``.
    """
    if not isinstance(num_residuals, int) or num_residuals < 2 or num_residuals % 2:
        msg = f"`num_residuals` (s) must be an even int >= 2 (s/2 by GMP + s/2 by GAP), got {num_residuals!r}."
        raise ValueError(msg)
    if num_residuals > total:
        msg = f"`num_residuals` (s) = {num_residuals} exceeds the {total} selected residual channels (sum of r)."
        raise ValueError(msg)
    return num_residuals


def upsample_and_concat(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Maps upsampled (bilinear) to the finest resolution among them and concatenated along channels."""
    size = maps[0].shape[-2:]
    for feature_map in maps[1:]:
        if feature_map.shape[-1] > size[-1]:
            size = feature_map.shape[-2:]
    upsampled = [
        m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps
    ]
    return torch.cat(upsampled, dim=1)


class StageOneBatch(NamedTuple):
    """One batch of stage 1 (HST hyperplanes, AFSS) as backbone levels.

    ``anomalous``: the levels of the anomalous images ``G_n``; ``masks``: their ``(B, 1, H, W)``
    anomaly masks; ``normal``: the levels of their normal twins ``I_n`` (synthetic anomalies), or
    ``None`` for real anomalies, which have no twin.
    """

    anomalous: Levels
    masks: torch.Tensor
    normal: Levels | None = None


class FeatureAutoencoder(nn.Module):
    """Per-layer reconstruction network (CPU-light replacement of RealNet's diffusion UNet).

    ``conv3x3 -> conv3x3 stride 2 (bottleneck) -> bilinear upsample -> conv3x3 -> conv1x1``: the
    strided bottleneck stops the identity shortcut, so anomalous features are reconstructed as
    their normal neighbourhood.
    """

    def __init__(self, channels: int, hidden_ratio: float = DEFAULTS.hidden_ratio) -> None:
        super().__init__()
        hidden = max(8, round(channels * hidden_ratio))
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` (same shape)."""
        code = self.encoder(x)
        code = F.interpolate(code, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(code)


class Discriminator(nn.Module):
    """Segmentation head on the ARD residual ``Lambda`` -> one anomaly logit per pixel."""

    def __init__(self, in_channels: int, widths: Sequence[int] = DEFAULTS.discriminator_widths) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(widths):
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=index != 0)]
            if index == 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            previous = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(previous, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, h, w)``."""
        return self.head(self.body(x))


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``: a width-preserving residual block (as in RealNet's head)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape as ``x``."""
        return x + self.block(x)


class RealNetDiscriminator(Discriminator):
    """A deeper head with RealNet's structure (``discriminator_head="realnet"``; this package's option, issue 32).

    RealNet's RRS head (``cnulab/RealNet``, read, not copied): a stack of residual blocks at the input
    width, the conv stack of :class:`Discriminator`, then a decoder stage at twice the resolution
    (bilinear x2, conv3x3 to 4 channels, ReLU, conv3x3 to the logit). The stage-2 resolution gives
    thinner defects a finer grid than the residuals' stride.
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = DEFAULTS.discriminator_widths,
        residual_blocks: int = 2,
    ) -> None:
        super().__init__(in_channels, widths)
        self.stack = nn.Sequential(*[ResidualBlock(in_channels) for _ in range(residual_blocks)], nn.ReLU())
        width = widths[-1] if len(widths) else in_channels
        self.head = nn.Sequential(
            nn.Conv2d(width, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, 2h, 2w)`` for an input of ``(B, C, h, w)``."""
        decoded = self.body(self.stack(x))
        decoded = F.interpolate(decoded, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.head(decoded)


class FixedOrderContext(nn.Module):
    """Discriminator context in a fixed channel order (``discriminator_input="residuals_and_features"``).

    This package's extension (issue 32), not the paper's: ARD's ``Lambda`` (eq. 13) gathers channels
    per image, so a given input channel of the discriminator is a different feature in every image,
    and it holds squared residuals (no sign, no feature values). This module adds, for every layer in
    order, the selected features ``phi_i`` and the signed residuals ``phi_i - Phi_i``, upsampled to the
    finest grid: channel ``k`` is the same feature (or residual) in every image. ``2 * sum(r)`` channels.

    ``width`` (``context_width``): project each layer's ``2 r_i`` channels to ``width`` with a learned 1x1
    convolution at the layer's own resolution, before upsampling: ``len(r) * width`` channels. A 1x1
    convolution commutes with bilinear upsampling, so this is the same as a 1x1 bottleneck in front of the
    head, at a fraction of the cost (upsampling, concatenating and convolving ``2 sum(r)`` channels on the
    finest grid was most of a training step). ``None``: no projection.
    """

    def __init__(self, num_selected: Sequence[int], width: int | None = None) -> None:
        super().__init__()
        if width is not None and (not isinstance(width, int) or width < 1):
            msg = f"`context_width` must be None or an int >= 1, got {width!r}."
            raise ValueError(msg)
        self.projections = None if width is None else nn.ModuleList([nn.Conv2d(2 * r, width, 1) for r in num_selected])
        self.out_channels = 2 * sum(num_selected) if width is None else width * len(num_selected)

    def forward(self, selected: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[phi_1, phi_1 - Phi_1, phi_2, phi_2 - Phi_2, ...]`` (projected per layer) on the finest grid."""
        maps = [torch.cat([z, z - r], dim=1) for z, r in zip(selected, reconstructions, strict=True)]
        if self.projections is not None:
            maps = [project(m) for project, m in zip(self.projections, maps, strict=True)]
        return upsample_and_concat(maps)


class HADNetModel(nn.Module):
    """HADNet: hyperbolic feature filtering network (torch part, exportable).

    Args:
        backbone: timm name or local weights file (see :mod:`anomalib_hyperbolic.backbones`).
        layers: Backbone layers (RealNet: ``layer1``-``layer4`` of ``wide_resnet50_2``).
        pre_trained: Load pretrained backbone weights.
        num_selected: AFSS ``r`` per layer (or one int for all layers).
        num_residuals: ARD ``s`` (even): ``s/2`` channels by GMP plus ``s/2`` by GAP.
        rho: Curvature of the Poincaré ball (``0`` = Euclidean, HADNet default 0.01).
        clip_radius: Feature clipping radius before ``expmap0``.
        hidden_ratio: Width of each reconstruction autoencoder relative to its ``r``.
        discriminator_widths: Conv widths of the segmentation head.
        score_pool_size: Box filter applied to the anomaly map before the max (image score).
        residual_selection: ``"ard"`` (eqs. 11-13) or ``"all"`` (ablation: every residual channel).
        discriminator_input: ``"ranked_residuals"`` (the paper's ``Lambda``) or ``"residuals_and_features"``
            (``Lambda`` plus :class:`FixedOrderContext`; this package's option).
        discriminator_head: ``"plain"`` (:class:`Discriminator`) or ``"realnet"`` (:class:`RealNetDiscriminator`).
        context_width: With ``"residuals_and_features"``: channels each layer's context is projected to
            (:class:`FixedOrderContext`); ``None``: unprojected.
        train_backbone: Let the backbone take gradients in training mode (its BatchNorm stays in eval
            mode); ``False``: frozen (RealNet).
        mean: Image normalisation mean (images arrive in ``[0, 1]``); ``None``: the paper's for the paper's
            WideResNet-50 backbone, else the backbone's own (see :func:`image_normalization`).
        std: Image normalisation std; ``None`` as for ``mean``.

    Every default comes from :data:`~.defaults.DEFAULTS`.
    """

    def __init__(
        self,
        backbone: str | os.PathLike = DEFAULTS.backbone,
        layers: Sequence[str] = DEFAULTS.layers,
        pre_trained: bool = DEFAULTS.pre_trained,
        num_selected: int | Sequence[int] = DEFAULTS.num_selected,
        num_residuals: int = DEFAULTS.num_residuals,
        rho: float = DEFAULTS.rho,
        clip_radius: float = DEFAULTS.clip_radius,
        hidden_ratio: float = DEFAULTS.hidden_ratio,
        discriminator_widths: Sequence[int] = DEFAULTS.discriminator_widths,
        score_pool_size: int = DEFAULTS.score_pool_size,
        residual_selection: str = DEFAULTS.residual_selection,
        mean: Sequence[float] | None = DEFAULTS.mean,
        std: Sequence[float] | None = DEFAULTS.std,
        discriminator_input: str = DEFAULTS.discriminator_input,
        discriminator_head: str = DEFAULTS.discriminator_head,
        train_backbone: bool = DEFAULTS.train_backbone,
        context_width: int | None = DEFAULTS.context_width,
    ) -> None:
        super().__init__()
        validate_curvature(rho, name="rho")  # 0 = Euclidean
        self.rho = float(rho)
        validate_clip_radius(clip_radius)
        if residual_selection not in {"ard", "all"}:
            msg = f"`residual_selection` must be 'ard' or 'all', got {residual_selection!r}."
            raise ValueError(msg)
        for name, value, allowed in (
            ("discriminator_input", discriminator_input, DISCRIMINATOR_INPUTS),
            ("discriminator_head", discriminator_head, DISCRIMINATOR_HEADS),
        ):
            if value not in allowed:
                msg = f"`{name}` must be one of {list(allowed)}, got {value!r}."
                raise ValueError(msg)
        uses_context = discriminator_input == "residuals_and_features"
        if context_width is not None and not uses_context:
            msg = (
                f"`context_width` ({context_width!r}) projects the fixed-order context, which only "
                "`discriminator_input='residuals_and_features'` feeds the discriminator; got "
                f"`discriminator_input={discriminator_input!r}`. Set one or leave `context_width` None."
            )
            raise ValueError(msg)
        if not isinstance(score_pool_size, int) or score_pool_size < 1:
            msg = f"`score_pool_size` must be an int >= 1, got {score_pool_size!r}."
            raise ValueError(msg)
        self.clip_radius = float(clip_radius)
        self.layers = list(layers)
        self.score_pool_size = score_pool_size
        self.residual_selection = residual_selection

        self.train_backbone = bool(train_backbone)
        self.feature_extractor = create_feature_extractor(
            backbone, self.layers, pre_trained=pre_trained, requires_grad=self.train_backbone
        ).eval()
        self.channels = [int(c) for c in self.feature_extractor.out_dims]
        self.num_selected = resolve_num_selected(num_selected, self.channels, self.layers)
        total = sum(self.num_selected)
        self.num_residuals = validate_num_residuals(num_residuals, total) if residual_selection == "ard" else total

        # None = the paper's statistics for the paper's backbone, the backbone's own for any other one
        mean, std = image_normalization(backbone, mean, std)
        self.register_buffer("image_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("image_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        # HST standardisation statistics (fitted on normal training images, see fit_feature_statistics).
        for index, width in enumerate(self.channels):
            self.register_buffer(f"feature_mean_{index}", torch.zeros(1, width, 1, 1))
            self.register_buffer(f"feature_std_{index}", torch.ones(1, width, 1, 1))
            # AFSS: indices of the selected feature maps; default = the first r (replaced by select_channels).
            self.register_buffer(f"selected_{index}", torch.arange(self.num_selected[index], dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))

        # HST eqs. (6)-(7): one learned Poincaré hyperplane (offset p on the ball, normal a) per layer.
        self.hyperplane_offsets = nn.ParameterList([nn.Parameter(torch.zeros(1, w)) for w in self.channels])
        self.hyperplane_normals = nn.ParameterList(
            [nn.Parameter(torch.randn(1, w) / math.sqrt(w)) for w in self.channels]
        )
        self.hyperplane_log_scales = nn.Parameter(torch.zeros(len(self.channels)))
        # fitted in stage 1 only (fitting_hyperplanes), then fixed: no gradients in training (DDP waits for those)
        for parameter in self.hyperplane_parameters():
            parameter.requires_grad_(False)

        self.reconstructors = nn.ModuleList([FeatureAutoencoder(r, hidden_ratio) for r in self.num_selected])
        # RealNet RRS: residual channels are ranked after a parameter-free batch norm, with RealNet's
        # momentum 0.9 (torch's convention: the running statistics follow the latest batches closely)
        self.rank_norm = nn.BatchNorm2d(total, affine=False, momentum=0.9)
        # this package's options (issue 32): fixed-order context next to Lambda, RealNet's deeper head
        self.context = FixedOrderContext(self.num_selected, context_width) if uses_context else None
        in_channels = self.num_residuals + (0 if self.context is None else self.context.out_channels)
        head = RealNetDiscriminator if discriminator_head == "realnet" else Discriminator
        self.discriminator = head(in_channels, discriminator_widths)

    # ---------------------------------------------------------------- parts
    def hyperplane_parameters(self) -> list[nn.Parameter]:
        """The HST hyperplanes' offsets, normals and log-scales."""
        return [*self.hyperplane_offsets, *self.hyperplane_normals, self.hyperplane_log_scales]

    @contextlib.contextmanager
    def fitting_hyperplanes(self) -> Iterator[None]:
        """Let the hyperplanes take gradients for the duration of the block (stage 1)."""
        for parameter in self.hyperplane_parameters():
            parameter.requires_grad_(True)
        try:
            yield
        finally:
            for parameter in self.hyperplane_parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> HADNetModel:
        """Switch mode, keeping the backbone in eval mode (frozen, or fine-tuned with fixed BatchNorm statistics)."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` normalised with ``image_mean`` / ``image_std`` (the backbone's input)."""
        return (images - self.image_mean) / self.image_std

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features ``phi_i`` for images in ``[0, 1]``; with gradients only when ``train_backbone`` trains."""
        with torch.set_grad_enabled(self.train_backbone and self.training and torch.is_grad_enabled()):
            features = self.feature_extractor(self.normalize(images))
        return [features[layer] for layer in self.layers]

    def hst(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Hyperbolic space transformation: standardise, clip, ``expmap0`` per pixel (HADNet eq. 3).

        Features are standardised per channel and divided by ``sqrt(C)`` so a typical pixel vector
        has norm ~1; clipping at ``clip_radius`` then only bounds outliers, and ``expmap0`` with
        curvature ``rho`` compresses large norms (``rho = 0``: clipped Euclidean features).
        """
        out = []
        for index, feature in enumerate(features):
            mean = getattr(self, f"feature_mean_{index}")
            std = getattr(self, f"feature_std_{index}")
            tangent = (feature - mean) / std / math.sqrt(feature.shape[1])
            tangent = clip_features(tangent, self.clip_radius, dim=1)
            out.append(expmap0(tangent, self.rho, dim=1) if self.rho > 0 else tangent)
        return out

    def hyperplane_distance(self, index: int, points: torch.Tensor) -> torch.Tensor:
        """Signed hyperbolic distance ``d_rho(z, H^c)`` of ball points to layer ``index``'s hyperplane (eq. 7)."""
        return poincare_hyperplane_distance(
            points,
            self.hyperplane_offsets[index],
            self.hyperplane_normals[index],
            self.rho,
            dim=1,
            signed=True,
        )

    def hyperplane_logits(self, points: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer anomaly logits of the hyperplane classifiers (hyperbolic MLR, distance x scale)."""
        scales = self.hyperplane_log_scales.exp()
        return [self.hyperplane_distance(index, z) * scales[index] for index, z in enumerate(points)]

    def select(self, points: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """AFSS: keep the selected feature maps of every layer (indices are buffers)."""
        return [torch.index_select(z, 1, getattr(self, f"selected_{index}")) for index, z in enumerate(points)]

    def reconstruct(self, selected: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reconstructed features ``Phi_i`` of the selected maps."""
        return [net(z) for net, z in zip(self.reconstructors, selected, strict=True)]

    @staticmethod
    def global_residual(residuals: Sequence[torch.Tensor]) -> torch.Tensor:
        """``Gamma``: residuals upsampled to the finest resolution and concatenated (ARD)."""
        return upsample_and_concat(residuals)

    def ard(self, gamma: torch.Tensor) -> torch.Tensor:
        """ARD eqs. (11)-(13): ``Lambda`` = top-``s/2`` channels by GMP (+) top-``s/2`` by GAP, per image."""
        if self.residual_selection == "all":
            return gamma
        ranked = self.rank_norm(gamma)
        half = self.num_residuals // 2
        gmp = ranked.amax(dim=(2, 3))  # eq. (11)
        gap = ranked.mean(dim=(2, 3))  # eq. (12)
        index_max = torch.topk(gmp, half, dim=1).indices
        index_avg = torch.topk(gap, half, dim=1).indices
        index = torch.cat([index_max, index_avg], dim=1)  # eq. (13)
        index = index[:, :, None, None].expand(-1, -1, gamma.shape[2], gamma.shape[3])
        return torch.gather(gamma, 1, index)

    def score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Image score: max of the box-filtered anomaly map (RealNet evaluation)."""
        size = min(self.score_pool_size, anomaly_map.shape[-2], anomaly_map.shape[-1])
        pooled = F.avg_pool2d(anomaly_map, kernel_size=size, stride=1) if size > 1 else anomaly_map
        return pooled.flatten(1).amax(dim=1)

    # ---------------------------------------------------------------- forward
    def forward_features(
        self,
        images: torch.Tensor,
        extract: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Selected hyperbolic features ``phi_i`` of every layer and all ball points ``z_i``.

        Args:
            images: Images in ``[0, 1]``.
            extract: Stand-in for :meth:`extract` returning the same backbone levels (training takes
                them from a feature cache); ``None``: :meth:`extract`.
        """
        points = self.hst((self.extract if extract is None else extract)(images))
        return self.select(points), points

    def head(self, selected: Sequence[torch.Tensor], image_size: Sequence[int]) -> dict[str, torch.Tensor]:
        """Reconstruction, residuals, ARD and discriminator for already selected features."""
        recon = self.reconstruct(selected)
        residuals = [(z - r) ** 2 for z, r in zip(selected, recon, strict=True)]
        gamma = self.global_residual(residuals)
        lam = self.ard(gamma)
        if self.context is not None:  # discriminator_input="residuals_and_features" (this package's option)
            lam = torch.cat([lam, self.context(selected, recon)], dim=1)
        logits = self.discriminator(lam)
        logits = F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)
        return {"logits": logits, "reconstructions": recon}

    def forward(
        self,
        images: torch.Tensor,
        levels: Sequence[torch.Tensor] | None = None,
        normal_levels: Sequence[torch.Tensor] | None = None,
    ) -> InferenceBatch | dict[str, torch.Tensor | list[torch.Tensor]]:
        """Inference: ``InferenceBatch(pred_score, anomaly_map)``; training: what :class:`~.loss.HADNetLoss` takes.

        Args:
            images: Images in ``[0, 1]``.
            levels: The backbone levels of ``images`` when already computed (training takes them from
                a feature cache); ``None``: :meth:`extract`.
            normal_levels: Training only: the levels of the images' normal twins ``I_n``, whose
                selected features are the reconstruction targets; ``None`` (real anomalies, no twin):
                the selected features themselves, which the loss then compares outside the mask.

        Returns:
            Training: ``{"logits", "reconstructions", "targets", "selected"}``, the logits ``(B, 1, H, W)``
            and per layer ``Phi_i``, the targets and ``phi_i``. Eval: the anomaly map (sigmoid of the
            logits) and the image score (:meth:`score`).
        """
        targets = None
        if self.training and normal_levels is not None:
            with torch.no_grad():
                targets = self.select(self.hst(normal_levels))
        selected, _ = self.forward_features(images, None if levels is None else lambda _: levels)
        out = self.head(selected, images.shape[-2:])
        if self.training:
            targets = [z.detach() for z in selected] if targets is None else targets
            return {**out, "targets": targets, "selected": selected}
        anomaly_map = torch.sigmoid(out["logits"])
        return InferenceBatch(pred_score=self.score(anomaly_map), anomaly_map=anomaly_map)

    # ---------------------------------------------------------------- stage 1 (before training)
    @torch.no_grad()
    def fit_feature_statistics(self, level_batches: Iterable[Sequence[torch.Tensor]]) -> None:
        """HST standardisation statistics (eq. 3) from the backbone levels of normal training images.

        Under DDP each rank passes its shard of the images; the sums are added over the ranks.

        Raises:
            ValueError: ``level_batches`` is empty.
        """
        state: list[ChannelMoments] | None = None
        for levels in level_batches:
            state = state or [ChannelMoments() for _ in levels]
            for moments, feature in zip(state, levels, strict=True):
                moments.update(feature)
        if state is None:
            msg = "HADNet got an empty training dataloader (or fewer images than ranks)."
            raise ValueError(msg)
        self.set_feature_statistics([moments.all_reduce() for moments in state])

    def fit_hyperplanes(self, batches: Iterable[StageOneBatch], lr: float) -> float | None:
        """Fit the HST hyperplanes of eqs. (6)-(7) to the anomaly masks, one Adam step per batch.

        Each layer's hyperplane is a hyperbolic logistic regression (logit = signed distance x a
        learned scale) trained with class-balanced BCE against the mask; the hyperplanes then give
        the AFSS target of eq. (10). Returns the last batch's loss (``None`` without batches).
        """
        optimizer = torch.optim.Adam(self.hyperplane_parameters(), lr=lr)
        loss = None
        with torch.enable_grad(), self.fitting_hyperplanes():
            for batch in batches:
                loss = hyperplane_loss(self.hyperplane_logits(self.hst(batch.anomalous)), batch.masks)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return None if loss is None else float(loss.detach())

    @torch.no_grad()
    def fit_selection(self, batches: Iterable[StageOneBatch], target: str = "hyperplane") -> None:
        """AFSS (eqs. 8-10): accumulate every feature map's loss over ``batches``, keep the ``r`` lowest per layer.

        ``target``: ``"hyperplane"`` (HADNet) or ``"mask"`` (RealNet's AFS), see :meth:`afss_channel_losses`.
        Without a normal twin (real anomalies), ``I_n`` is :meth:`background_reference`.
        """
        totals = None
        for batch in batches:
            anomalous = self.hst(batch.anomalous)
            normal = (
                self.background_reference(anomalous, batch.masks) if batch.normal is None else self.hst(batch.normal)
            )
            losses = self.afss_channel_losses(normal, anomalous, target=target, masks=batch.masks)
            totals = losses if totals is None else [t + loss for t, loss in zip(totals, losses, strict=True)]
        self.set_selection(totals, mode="afss")

    @staticmethod
    def background_reference(points: Sequence[torch.Tensor], masks: torch.Tensor) -> list[torch.Tensor]:
        """``I_n`` for real anomalies (no normal twin): per image, the mean feature outside the mask."""
        reference = []
        for z in points:
            keep = 1 - (F.interpolate(masks, size=z.shape[-2:], mode="bilinear", align_corners=False) > 0).float()
            mean = (z * keep).sum(dim=(2, 3), keepdim=True) / keep.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
            reference.append(mean.expand_as(z))
        return reference

    @torch.no_grad()
    def set_feature_statistics(self, state: list[ChannelMoments]) -> None:
        """Store the HST standardisation mean / std, per layer, from its channel moments."""
        for index, moments in enumerate(state):
            mean, std = moments.compute()
            getattr(self, f"feature_mean_{index}").copy_(mean.view(1, -1, 1, 1))
            getattr(self, f"feature_std_{index}").copy_(std.clamp_min(1e-6).view(1, -1, 1, 1))

    @torch.no_grad()
    def afss_channel_losses(
        self,
        normal_points: Sequence[torch.Tensor],
        anomalous_points: Sequence[torch.Tensor],
        target: str = "hyperplane",
        masks: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """AFSS loss of every feature map of every layer for one batch (eqs. 8-10).

        ``epsilon(i, j) = phi(i, j)_{I_n} - phi(i, j)_{G_n}`` (eq. 8); ``M = R(N(epsilon^2))`` (eq. 9)
        with ``N`` = min-max over the batch and ``R`` = alignment to the target's grid (the distance
        map is computed on each layer's own grid; a mask is resized to it with nearest neighbours);
        ``L_AFSS(i, j) = mean (M - N(d))^2`` (eq. 10) where ``d`` is the signed hyperbolic distance
        to the layer's hyperplane (``target="hyperplane"``), or the anomaly mask itself
        (``target="mask"``, RealNet's AFS).

        Returns:
            One ``(C_i,)`` tensor of losses per layer.
        """
        losses = []
        for index, (normal, anomalous) in enumerate(zip(normal_points, anomalous_points, strict=True)):
            if target == "mask":
                if masks is None:
                    msg = "AFSS target 'mask' needs `masks`."
                    raise ValueError(msg)
                goal = F.interpolate(masks.float(), size=anomalous.shape[-2:], mode="nearest")
            else:
                goal = self.hyperplane_distance(index, anomalous)
            goal = _minmax(goal.transpose(0, 1).flatten(1))  # (1, B*h*w)
            # eq. (8), squared; R is the identity here: d is computed on the layer's own grid.
            diff = (normal - anomalous) ** 2
            m = _minmax(diff.transpose(0, 1).flatten(1))  # eq. (9), (C, B*h*w)
            losses.append((m - goal).pow(2).mean(dim=1))  # eq. (10)
        return losses

    @torch.no_grad()
    def set_selection(self, losses: Sequence[torch.Tensor], mode: str = "afss", seed: int = 0) -> None:
        """Fix the AFSS indices: the ``r_i`` maps with the lowest loss (``mode="random"``: ablation)."""
        generator = torch.Generator().manual_seed(seed)
        for index, loss in enumerate(losses):
            r = self.num_selected[index]
            if mode == "random":
                chosen = torch.randperm(loss.numel(), generator=generator)[:r]
            else:
                loss = torch.nan_to_num(loss.float(), nan=float("inf"))
                chosen = torch.topk(loss, r, largest=False).indices
            getattr(self, f"selected_{index}").copy_(torch.sort(chosen).values.to(torch.long))
        self.initialized.fill_(True)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation of each row of ``x`` to ``[0, 1]`` (HADNet's ``N``)."""
    low = x.amin(dim=1, keepdim=True)
    high = x.amax(dim=1, keepdim=True)
    return (x - low) / (high - low + 1e-6)
