"""PyTorch model of HypAD: EfficientAD's student-teacher-autoencoder in the Poincaré ball.

The networks (PDN-S / PDN-M teacher, student with twice the channels, autoencoder), the teacher
standardisation, the augmentation of the autoencoder view and the map normalisation are anomalib's
:class:`~anomalib.models.image.efficient_ad.torch_model.EfficientAdModel`, which this class extends.
What changes (HypAD section 3.2):

1. every 384-d output (teacher, both student halves, autoencoder) passes the projection module
   (a pooling layer), is clipped to radius ``r`` (:func:`~anomalib_hyperbolic.geometry.clip_features`,
   HypAD section 4.2) and mapped into the Poincaré ball of curvature ``c`` by ``expmap0`` (eq. (4));
2. every squared difference of EfficientAD (hard-feature loss, ImageNet penalty, autoencoder loss,
   student-AE loss, both anomaly maps) is replaced by the hyperbolic discrepancy of
   :func:`~anomalib_hyperbolic.models.hypad.loss.hyperbolic_discrepancy` (eqs. (2), (6)).

With ``c=0``, ``clip_radius=inf`` and ``projection="identity"`` the model
computes exactly what anomalib's ``EfficientAdModel`` computes (same random-number stream, same
losses and maps).
"""

from __future__ import annotations

import inspect
import math
import os

import torch
import torch.nn.functional as F
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize
from torch import nn

from anomalib_hyperbolic.geometry import (
    clip_features,
    poincare_distance_of_tangents,
    validate_clip_radius,
    validate_curvature,
)

from .loss import DISCREPANCY_MODES, embed_to_ball, hard_feature_loss, hyperbolic_discrepancy

__all__ = [
    "ANOMALIB_API",
    "PENALTIES",
    "PROJECTIONS",
    "ChannelAvgPool",
    "HypADModel",
    "PooledConvolution",
    "check_anomalib_api",
    "last_convolution",
    "load_teacher_weights",
    "parse_model_size",
]

PROJECTIONS = ("avgpool", "identity")
PENALTIES = ("unclipped", "clipped")

#: The anomalib methods HypAD relies on, with their parameters: the hooks ``EfficientAdModel.forward``
#: calls (overridden by :class:`HypADModel`), the private helpers it uses, and the ``EfficientAd``
#: methods the Lightning module overrides or inherits. :func:`check_anomalib_api` checks them.
ANOMALIB_API: dict[str, tuple[str, ...]] = {
    "EfficientAdModel.compute_student_teacher_distance": ("self", "batch"),
    "EfficientAdModel.compute_losses": ("self", "batch", "batch_imagenet", "distance_st"),
    "EfficientAdModel.compute_maps": ("self", "batch", "student_output", "distance_st", "normalize"),
    "EfficientAdModel._normalize_teacher": ("self", "teacher_output"),
    "EfficientAdModel._is_set_tensor": ("p_dic",),
    "EfficientAdModel.choose_random_aug_image": ("image",),
    "EfficientAd.__init__": (
        "self",
        "imagenet_dir",
        "teacher_out_channels",
        "model_size",
        "lr",
        "weight_decay",
        "padding",
        "pad_maps",
        "pre_processor",
        "post_processor",
        "evaluator",
        "visualizer",
    ),
    "EfficientAd.prepare_pretrained_model": ("self",),
    "EfficientAd.prepare_imagenette_data": ("self", "image_size"),
    "EfficientAd.teacher_channel_mean_std": ("self", "dataloader"),
    "EfficientAd.map_norm_quantiles": ("self", "dataloader"),
    "EfficientAd.training_step": ("self", "batch", "args", "kwargs"),
}


def check_anomalib_api() -> None:
    """Raise ``RuntimeError`` naming every :data:`ANOMALIB_API` method anomalib lacks or changed.

    Without this, a renamed hook would silently turn HypAD into EfficientAd (its ``forward`` would
    call anomalib's own ``compute_losses``) or fail deep inside training.
    """
    import anomalib
    from anomalib.models.image.efficient_ad.lightning_model import EfficientAd

    owners = {"EfficientAdModel": EfficientAdModel, "EfficientAd": EfficientAd}
    problems = []
    for name, expected in ANOMALIB_API.items():
        owner, method = name.split(".")
        function = getattr(owners[owner], method, None)
        found = None if function is None else tuple(inspect.signature(function).parameters)
        if found != expected:
            problems.append(f"{name}{expected}: " + ("missing" if found is None else f"now has {found}"))
    if problems:
        msg = (
            f"anomalib {anomalib.__version__} changed EfficientAd methods HypAD builds on ({'; '.join(problems)}). "
            "Update anomalib_hyperbolic.models.hypad (ANOMALIB_API) or install the anomalib 2.7 it was written for."
        )
        raise RuntimeError(msg)


def parse_model_size(model_size: EfficientAdModelSize | str) -> EfficientAdModelSize:
    """``"small"``/``"s"``/``"medium"``/``"m"`` (any case) -> :class:`EfficientAdModelSize`."""
    if isinstance(model_size, EfficientAdModelSize):
        return model_size
    aliases = {"s": "small", "m": "medium", "pdn-s": "small", "pdn-m": "medium"}
    value = str(model_size).strip().lower()
    value = aliases.get(value, value)
    try:
        return EfficientAdModelSize(value)
    except ValueError:
        msg = f"Unknown PDN size `model_size={model_size!r}`; use 'small' (PDN-S) or 'medium' (PDN-M)."
        raise ValueError(msg) from None


def last_convolution(network: nn.Module) -> tuple[str, nn.Conv2d]:
    """The name and module of the last ``nn.Conv2d`` a PDN or EfficientAD's autoencoder applies (its output layer).

    In anomalib's PDN-S (``conv4``), PDN-M (``conv6``) and autoencoder (``decoder.deconv8``) the output
    convolution is the last one defined.
    """
    name, convolution = [(name, m) for name, m in network.named_modules() if isinstance(m, nn.Conv2d)][-1]
    return name, convolution


class PooledConvolution(nn.Module):
    """A convolution's hyper-parameters with other weights (:meth:`HypADModel.projected_output`'s folded last layer)."""

    def __init__(self, convolution: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.convolution = convolution
        self.pooled_weight = weight
        self.pooled_bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``convolution`` (stride, padding, ...) with the pooled weights and bias."""
        return self.convolution._conv_forward(x, self.pooled_weight, self.pooled_bias)


class ChannelAvgPool(nn.Module):
    """Projection module of HypAD: average pooling over groups of ``kernel`` adjacent channels.

    HypAD section 3.2 reduces the 384-d PDN features "by a simple projection module (i.e. a pooling
    layer)" before the exponential map, without giving the pooling; we pool the channel axis
    (``C -> C / kernel``), parameter-free. ``kernel=1`` is the identity.
    """

    def __init__(self, kernel: int = 2) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C / kernel, H, W)``."""
        if self.kernel == 1:
            return x
        # channel i: the mean of channels i k .. i k + k - 1, as strided slices (OpenVINO runs this about 1.2x
        # faster than a mean over a reshaped axis; for k = 2 the same bits: (a + b) / 2)
        total = x[:, 0 :: self.kernel]
        for offset in range(1, self.kernel):
            total = total + x[:, offset :: self.kernel]
        return total / self.kernel


class HypADModel(EfficientAdModel):
    """HypAD network: EfficientAD's PDN teacher/student and autoencoder, trained in the Poincaré ball.

    Args:
        teacher_out_channels: Channels of the teacher output (384 in the paper).
        model_size: PDN size, ``"small"`` (PDN-S, default) or ``"medium"`` (PDN-M).
        c: Curvature ``>= 0`` (ball of curvature ``-c``); ``0.01`` in the paper. With
            ``learn_curvature`` this is the initial value.
        learn_curvature: Learn ``c`` as ``softplus(raw)`` (kept positive) instead of fixing it.
        clip_radius: Feature-clipping radius ``r`` before the exponential map (2.3 in the paper);
            ``math.inf`` disables clipping.
        projection: ``"avgpool"`` (channel average pooling by ``projection_kernel``) or ``"identity"``.
        projection_kernel: Channel-pooling kernel of the ``"avgpool"`` projection.
        discrepancy: ``"tangent"`` (default), ``"location"`` or ``"channel"``, see
            :mod:`anomalib_hyperbolic.models.hypad.loss`.
        augmentation_prob: Probability of colour-jittering the autoencoder view: 1.0 (default, every
            step, as EfficientAD: the paper's jitter strength 0.2 read as such, see :meth:`augment`);
            0.2 is the literal "probability of 0.2" reading.
        penalty: ImageNet penalty of the student: ``"unclipped"`` (default) takes the discrepancy to the
            origin of the projected student output *before* clipping, ``mean(p^2)`` (EfficientAD's
            ``mean(s^2)``, see :meth:`penalty_loss`); ``"clipped"`` (HypAD v1) takes it after clipping,
            where every vector longer than ``r`` contributes the constant ``r^2`` and no gradient.
        hard_quantile: Quantile of the hard-feature loss (0.999 as EfficientAD).
        padding: Padding in the convolutions (anomalib's EfficientAd option).
        pad_maps: Pad the maps of an unpadded network to the padded size (anomalib's option).
    """

    def __init__(
        self,
        teacher_out_channels: int = 384,
        model_size: EfficientAdModelSize | str = EfficientAdModelSize.S,
        c: float = 0.01,
        learn_curvature: bool = False,
        clip_radius: float = 2.3,
        projection: str = "avgpool",
        projection_kernel: int = 2,
        discrepancy: str = "tangent",
        augmentation_prob: float = 1.0,
        penalty: str = "unclipped",
        hard_quantile: float = 0.999,
        padding: bool = False,
        pad_maps: bool = True,
    ) -> None:
        check_anomalib_api()
        size = parse_model_size(model_size)
        validate_curvature(c, "c")
        if learn_curvature and float(c) <= 0:
            msg = f"`learn_curvature=True` needs an initial curvature `c` > 0 (softplus parameter), got c={c}."
            raise ValueError(msg)
        validate_clip_radius(clip_radius)
        if projection not in PROJECTIONS:
            msg = f"`projection` must be one of {PROJECTIONS}, got {projection!r}."
            raise ValueError(msg)
        kernel = projection_kernel if projection == "avgpool" else 1
        if kernel < 1 or teacher_out_channels % kernel:
            msg = (
                f"`projection_kernel` must be >= 1 and divide `teacher_out_channels` ({teacher_out_channels}), "
                f"got {projection_kernel}."
            )
            raise ValueError(msg)
        if discrepancy not in DISCREPANCY_MODES:
            msg = f"`discrepancy` must be one of {DISCREPANCY_MODES}, got {discrepancy!r}."
            raise ValueError(msg)
        if not 0.0 <= augmentation_prob <= 1.0:
            msg = f"`augmentation_prob` must be in [0, 1], got {augmentation_prob}."
            raise ValueError(msg)
        if penalty not in PENALTIES:
            msg = f"`penalty` must be one of {PENALTIES}, got {penalty!r}."
            raise ValueError(msg)
        if not 0.0 < hard_quantile < 1.0:
            msg = f"`hard_quantile` must be in (0, 1), got {hard_quantile}."
            raise ValueError(msg)
        super().__init__(
            teacher_out_channels=teacher_out_channels,
            model_size=size,
            padding=padding,
            pad_maps=pad_maps,
        )
        # fixed or fitted outside the gradient step: no gradients (DDP would wait for them)
        for fixed in (self.teacher, self.mean_std, self.quantiles):
            fixed.requires_grad_(False)
        self.model_size = size
        self.clip_radius = float(clip_radius)
        self.projection = ChannelAvgPool(kernel)
        self.discrepancy = discrepancy
        self.augmentation_prob = float(augmentation_prob)
        self.penalty = penalty
        self.hard_quantile = float(hard_quantile)
        self.learn_curvature = learn_curvature
        self._fixed_c = float(c)
        if learn_curvature:
            # softplus^-1(c) = log(expm1(c)), so that softplus(raw) == c at initialisation.
            self.curvature_raw = nn.Parameter(torch.tensor(math.log(math.expm1(float(c)))))

    @property
    def curvature(self) -> float | torch.Tensor:
        """Current curvature ``c`` (a Python float when fixed, a positive scalar tensor when learnt)."""
        if self.learn_curvature:
            return F.softplus(self.curvature_raw)
        return self._fixed_c

    # ------------------------------------------------------------------ feature pipeline
    def to_tangent(self, features: torch.Tensor) -> torch.Tensor:
        """Projection -> clipping to ``r``: the tangent vector at 0 that :meth:`to_ball` maps onto the ball."""
        return clip_features(self.projection(features), radius=self.clip_radius, dim=1)

    def to_ball(self, features: torch.Tensor) -> torch.Tensor:
        """Projection -> clipping to ``r`` -> ``expmap0`` (HypAD Fig. 3, eq. (4) with ``h0 = 0``); per location."""
        return embed_to_ball(self.to_tangent(features), self.curvature, self.discrepancy)

    def location_map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` channel mean of :meth:`distance` of two feature maps: an anomaly map (inference).

        The ``"channel"`` mode takes the channel mean of :meth:`distance`; the others project the maps
        and use :meth:`projected_map`.
        """
        if self.discrepancy == "channel":
            return torch.mean(self.distance(x, y), dim=1, keepdim=True)
        return self.projected_map(self.projection(x), self.projection(y))

    def projected_map(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """:meth:`location_map` of two already projected maps (``"tangent"`` and ``"location"`` modes).

        The channel mean of the discrepancy is ``(d_c / 2)^2 / C`` per location (HypAD eq. (2),
        :mod:`.loss`), computed in closed form, clipping included
        (:func:`~anomalib_hyperbolic.geometry.poincare_distance_of_tangents`): channel reductions only,
        which keeps the exported graph about as cheap as EfficientAD's ``mean((t - s)^2)``.
        """
        c = self.curvature
        if not isinstance(c, torch.Tensor) and c == 0 and math.isinf(self.clip_radius):
            return torch.mean((u - v).pow(2), dim=1, keepdim=True)  # EfficientAD's map, bit for bit
        distance = poincare_distance_of_tangents(u, v, c, dim=1, keepdim=True, clip_radius=self.clip_radius)
        return (distance / 2).pow(2) / u.shape[1]

    @property
    def folds_projection(self) -> bool:
        """Whether inference folds the channel pooling into the last convolutions (:meth:`projected_output`)."""
        return self.projection.kernel > 1 and self.discrepancy != "channel"

    def projected_output(self, network: nn.Module, *args: object, standardize: bool = False) -> torch.Tensor:
        """``projection(network(*args))`` (teacher: of its standardised output), by pooled last-layer weights.

        The channel pooling, and the teacher's per-channel standardisation before it, are linear in the
        output of the network's last convolution, so they fold into its weights and bias: the network
        runs once with that convolution giving ``C / k`` channels, and the exported graph holds no
        pooling and a cheaper last layer. Inference only; the values equal the unfolded ones up to
        rounding.
        """
        name, convolution = last_convolution(network)
        weight, bias = convolution.weight, convolution.bias
        if standardize:  # EfficientAd's _normalize_teacher: (t - mean) / std once the statistics are set
            is_set = self._is_set_tensor(self.mean_std)
            std = torch.where(is_set, self.mean_std["std"], torch.ones_like(self.mean_std["std"])).flatten()
            mean = torch.where(is_set, self.mean_std["mean"], torch.zeros_like(self.mean_std["mean"])).flatten()
            weight, bias = weight / std.view(-1, 1, 1, 1), (bias - mean) / std
        kernel = self.projection.kernel
        pooled = PooledConvolution(
            convolution,
            weight.reshape(-1, kernel, *weight.shape[1:]).mean(dim=1),
            bias.reshape(-1, kernel).mean(dim=1),
        )
        # the network runs with its last layer swapped for the call (a module swap, which TorchScript tracing,
        # and so OpenVINO's converter, records as plain convolution; torch.func.functional_call it refuses)
        parent_name, _, attribute = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, attribute, pooled)
        try:
            return network(*args)
        finally:
            setattr(parent, attribute, convolution)

    def ball_discrepancy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-element hyperbolic discrepancy of two maps of points on the ball (HypAD eqs. (2), (6))."""
        return hyperbolic_discrepancy(x, y, self.curvature, self.discrepancy)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Hyperbolic discrepancy of two feature maps (Euclidean outputs of the networks)."""
        return self.ball_discrepancy(self.to_ball(x), self.to_ball(y))

    def penalty_loss(self, student_output: torch.Tensor) -> torch.Tensor:
        """EfficientAD's out-of-distribution penalty ``mean(s^2)`` in the ball: ``mean(D(0, h))``.

        HypAD eq. (2) with ``x = 0``: ``d_c(0, exp_0(p)) = 2 ||p||`` for every ``c`` and
        ``log_0(exp_0(p)) = p``, so the tangent discrepancy of the embedded point to the origin is
        ``p_k^2`` exactly (all three ``discrepancy`` modes); it is computed in this closed form, which
        does not saturate in float32 where ``sqrt(c) ||p||`` is large.

        ``p`` is the projected student output, unclipped for ``penalty="unclipped"``: clipping first
        (``"clipped"``, HypAD v1) gives every vector longer than ``r`` (standardised pooled PDN features
        have norms of 10-14) the constant ``r^2`` and a zero gradient, i.e. no penalty at ``r = 2.3``.

        Args:
            student_output: First ``teacher_out_channels`` student channels on the penalty images.

        Returns:
            The scalar penalty.
        """
        tangent = self.projection(student_output)
        if self.penalty == "clipped":
            tangent = clip_features(tangent, radius=self.clip_radius, dim=1)
        return torch.mean(tangent.pow(2))

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """Colour jitter of the autoencoder view (HypAD section 4.2), anomalib's ``choose_random_aug_image``.

        The paper: "ColorJitter is used to randomly enhance the brightness, contrast, and saturation
        of an image with a probability of 0.2, i.e. RandomChoice([ColorJitter(brightness=0.2),
        ColorJitter(contrast=0.2), ColorJitter(saturation=0.2)])". The "i.e." spells the 0.2 out as
        the jitter *strength* (factor ~ U(0.8, 1.2) of one randomly chosen jitter), which is
        EfficientAD's augmentation ("following [1]"), applied to every training image. That reading
        is the default, ``augmentation_prob=1``: no extra random number is drawn, so the random
        stream is EfficientAd's. ``augmentation_prob < 1`` applies the jitter with that probability
        (``0.2``: the literal reading, HypAD v1's default, which leaves 80 % of the AE steps
        unaugmented).
        """
        if self.augmentation_prob >= 1.0:
            return self.choose_random_aug_image(image)
        if self.augmentation_prob <= 0.0 or float(torch.rand(1)) >= self.augmentation_prob:
            return image
        return self.choose_random_aug_image(image)

    # ------------------------------------------------------------------ EfficientAdModel hooks
    # anomalib's ``EfficientAdModel.forward`` calls these three (see ANOMALIB_HOOKS); each network
    # output is mapped to the ball once.
    def compute_student_teacher_distance(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Student output and the student-teacher discrepancy ``D(h_t, h_s)`` (replaces ``(t - s)^2``).

        Per element while training (the hard-feature loss ranks them); the ``(B, 1, H, W)`` channel mean
        (:meth:`location_map`) otherwise, which is all that :meth:`compute_maps` takes from it.
        """
        if not self.training and self.folds_projection:  # the student output comes back projected (C channels)
            teacher_projected = self.projected_output(self.teacher, batch, standardize=True)
            student_projected = self.projected_output(self.student, batch)
            half = student_projected.shape[1] // 2
            return student_projected, self.projected_map(teacher_projected, student_projected[:, :half])
        if not self.training:
            teacher_output = self._normalize_teacher(self.teacher(batch))
            student_output = self.student(batch)
            return student_output, self.location_map(teacher_output, student_output[:, : self.teacher_out_channels])
        with torch.no_grad():
            teacher_ball = self.to_ball(self._normalize_teacher(self.teacher(batch)))
        student_output = self.student(batch)
        distance_st = self.ball_discrepancy(teacher_ball, self.to_ball(student_output[:, : self.teacher_out_channels]))
        return student_output, distance_st

    def compute_losses(
        self,
        batch: torch.Tensor,
        batch_imagenet: torch.Tensor | None,
        distance_st: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EfficientAD's three losses with the hyperbolic discrepancy (HypAD eq. (6)).

        * ``loss_st``: hard-feature loss (mean of the discrepancies at or above their 99.9 % quantile)
          plus, with penalty images, :meth:`penalty_loss` (EfficientAD's ``mean(s^2)``);
        * ``loss_ae``: ``mean(D(teacher(aug), ae(aug)))``;
        * ``loss_stae``: ``mean(D(ae(aug), student_ae(aug)))``.
        """
        loss_st = hard_feature_loss(distance_st, self.hard_quantile)
        if batch_imagenet is not None:
            loss_st = loss_st + self.penalty_loss(self.student(batch_imagenet)[:, : self.teacher_out_channels])
        aug_img = self.augment(batch)
        ae_ball = self.to_ball(self.ae(aug_img, batch.shape[-2:]))
        with torch.no_grad():
            teacher_ball = self.to_ball(self._normalize_teacher(self.teacher(aug_img)))
        student_ball = self.to_ball(self.student(aug_img)[:, self.teacher_out_channels :])
        loss_ae = torch.mean(self.ball_discrepancy(teacher_ball, ae_ball))
        loss_stae = torch.mean(self.ball_discrepancy(ae_ball, student_ball))
        return loss_st, loss_ae, loss_stae

    def compute_maps(
        self,
        batch: torch.Tensor,
        student_output: torch.Tensor,
        distance_st: torch.Tensor,
        normalize: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Local (student-teacher) and global (student-AE) maps: channel means of the discrepancies.

        anomalib's ``compute_maps`` computes the student-AE difference inline, so this is its code with
        that one term replaced: padding, bilinear resizing and the quantile normalisation
        ``0.1 (m - q_a) / (q_b - q_a)`` (export-safe selects) are EfficientAD's.
        """
        image_size = batch.shape[-2:]
        with torch.no_grad():
            if student_output.shape[1] != 2 * self.teacher_out_channels:  # projected by the folded student
                ae_projected = self.projected_output(self.ae, batch, image_size)
                map_stae = self.projected_map(ae_projected, student_output[:, student_output.shape[1] // 2 :])
            else:
                map_stae = self.location_map(self.ae(batch, image_size), student_output[:, self.teacher_out_channels :])
            maps = [torch.mean(distance_st, dim=1, keepdim=True), map_stae]
        if self.pad_maps:
            maps = [F.pad(anomaly_map, (4, 4, 4, 4)) for anomaly_map in maps]
        maps = [F.interpolate(anomaly_map, size=image_size, mode="bilinear") for anomaly_map in maps]
        if normalize:
            is_set = self._is_set_tensor(self.quantiles)
            for index, key in enumerate(("st", "ae")):
                q_a, q_b = self.quantiles[f"qa_{key}"], self.quantiles[f"qb_{key}"]
                spread = torch.where(is_set, q_b - q_a, torch.ones_like(q_a))
                maps[index] = torch.where(is_set, 0.1 * (maps[index] - q_a) / spread, maps[index])
        return maps[0], maps[1]


def _extract_state_dict(loaded: object, path: str) -> dict[str, torch.Tensor]:
    """Teacher state dict from a file: a plain state dict, or a distillation checkpoint (``"teacher"``)."""
    if isinstance(loaded, dict) and "teacher" in loaded and isinstance(loaded["teacher"], dict):
        loaded = loaded["teacher"]
    elif isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        msg = f"Teacher weights file {path!r} does not hold a state dict of tensors (got {type(loaded).__name__})."
        raise ValueError(msg)
    return loaded


def load_teacher_weights(teacher: nn.Module, path: str | os.PathLike[str], model_size: str = "") -> None:
    """Load a local PDN teacher state dict (``torch.load(..., weights_only=True)``) into ``teacher``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a state dict, or its keys/shapes do not match the PDN
            (the message names the missing, unexpected and mismatched keys).
    """
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        msg = f"Teacher weights file `teacher_weights={str(path)!r}` does not exist."
        raise FileNotFoundError(msg)
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        msg = f"Cannot read teacher weights file {str(path)!r} with torch.load(weights_only=True): {error}"
        raise ValueError(msg) from error
    state = _extract_state_dict(loaded, str(path))
    expected = teacher.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        arch = f"PDN-{model_size[:1].upper()} " if model_size else "PDN "
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if mismatched:
            parts.append(f"shape mismatches [{'; '.join(mismatched)}]")
        msg = (
            f"Teacher weights {str(path)!r} do not match the {arch}teacher architecture "
            f"(check `model_size` / `teacher_out_channels`): {', '.join(parts)}."
        )
        raise ValueError(msg)
    teacher.load_state_dict(state)
