"""Beyond the paper: the options that change SimpleNet's torch model, each plugged into one hook.

=============================  =========================================  ===================================
option                         what it does                               hook of :class:`SimpleNetModel`
=============================  =========================================  ===================================
``feature_standardization``    ``o`` standardised per channel with         :meth:`~SimpleNetModel.standardize`
                               training-set statistics (buffers)
``relative_noise``             ``sigma`` times each feature's RMS entry     :meth:`~SimpleNetModel.anomalous`
``distance="poincare"``        heads on the Poincaré ball (:mod:`.poincare`)  :meth:`~SimpleNetModel.new_head`,
                                                                          :meth:`~SimpleNetModel.anomalous`
``ensemble_size``              ``K`` adaptor/discriminator heads, scores   :meth:`~SimpleNetModel.heads`,
                               averaged                                   :meth:`~SimpleNetModel.patch_scores`
=============================  =========================================  ===================================

The synthetic defects (``synthetic_anomalies``) change only the training data: see
:mod:`.synthetic_defects`. :func:`build_model` returns the paper's :class:`SimpleNetModel` when
every option is off, else an :class:`ExtendedSimpleNetModel`; the state-dict keys of every variant
are those of the pre-v2 single class, so older checkpoints load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from anomalib_hyperbolic.geometry import logmap0
from anomalib_hyperbolic.models.components import ChannelMoments

from .defaults import DEFAULTS, require_positive_int
from .poincare import new_poincare_head, validate_poincare_arguments, wrapped_normal
from .torch_model import Head, SimpleNetModel

__all__ = ["ExtendedSimpleNetModel", "build_model"]


class ExtendedSimpleNetModel(SimpleNetModel):
    """:class:`SimpleNetModel` with the options beyond the paper (table in the module docstring).

    Args:
        relative_noise: Scale ``sigma`` by each feature's root-mean-square entry (of ``log_0(x)`` on
            the ball), computed without gradient, so the noise level follows the backbone's feature scale.
        feature_standardization: Standardise ``o`` per channel with the training set's mean and
            standard deviation (:meth:`fit_feature_statistics`) before the adaptor; the isotropic
            noise of eq. (6) then has the same size relative to every channel's spread.
        distance: ``"euclidean"`` (paper) or ``"poincare"``.
        curvature: Ball curvature ``c`` for ``distance="poincare"`` (> 0 there).
        discriminator_input: For ``"poincare"``: ``"logmap"`` or ``"distance"`` (:mod:`.poincare`).
        ensemble_size: ``K`` independently initialised adaptor/discriminator heads on the one frozen
            feature extractor; the anomaly score is ``s = -(1/K) sum_k D_k(G_k(o))``. Head 0 is
            ``adaptor``/``discriminator``, heads 1.. live in ``extra_heads``.
        **paper: The arguments of :class:`SimpleNetModel`.
    """

    def __init__(
        self,
        relative_noise: bool = DEFAULTS.relative_noise,
        feature_standardization: bool = DEFAULTS.feature_standardization,
        distance: str = DEFAULTS.distance,
        curvature: float = DEFAULTS.curvature,
        discriminator_input: str = DEFAULTS.discriminator_input,
        ensemble_size: int = DEFAULTS.ensemble_size,
        **paper: Any,
    ) -> None:
        validate_poincare_arguments(distance, curvature, discriminator_input)
        require_positive_int("ensemble_size", ensemble_size)
        # Plain attributes, set before nn.Module.__init__ because SimpleNetModel.__init__ calls new_head.
        self.distance = distance
        self.curvature = float(curvature) if distance == "poincare" else 0.0
        self.discriminator_input = discriminator_input
        super().__init__(**paper)
        self.relative_noise = relative_noise
        self.feature_standardization = feature_standardization
        if feature_standardization:  # registered only when used: the paper model's state dict is unchanged
            self.register_buffer("feature_mean", torch.zeros(self.embed_dim))
            self.register_buffer("feature_std", torch.ones(self.embed_dim))
            self.register_buffer("feature_statistics_fitted", torch.tensor(False))
        self.ensemble_size = ensemble_size
        if ensemble_size > 1:
            self.extra_heads = nn.ModuleList(
                nn.ModuleDict(dict(zip(("adaptor", "discriminator"), self.new_head(), strict=True)))
                for _ in range(ensemble_size - 1)
            )

    # --- distance="poincare" -------------------------------------------------------------------------
    def new_head(self) -> Head:
        """The paper's head, or on the ball (:func:`.poincare.new_poincare_head`)."""
        if self.distance == "euclidean":
            return super().new_head()
        return new_poincare_head(
            self.embed_dim,
            self.adaptor_bias,
            self.discriminator_hidden,
            self.negative_slope,
            self.curvature,
            self.discriminator_input,
        )

    # --- relative_noise, distance="poincare" ---------------------------------------------------------
    def anomalous(self, adapted: torch.Tensor) -> torch.Tensor:
        """Eq. (6) with ``relative_noise`` (and its wrapped normal on the ball, :func:`.poincare.wrapped_normal`)."""
        # drawn in float32 also under bf16 autocast (a third faster on the CPU; the same numbers in float32)
        dtype = adapted.dtype if adapted.dtype.itemsize >= 4 else torch.float32
        noise = (torch.randn(adapted.shape, device=adapted.device, dtype=dtype) * self.noise_std).to(adapted.dtype)
        if self.relative_noise:
            tangent = adapted if self.distance == "euclidean" else logmap0(adapted, self.curvature)
            noise = noise * tangent.detach().pow(2).mean(-1, keepdim=True).sqrt()
        if self.distance == "euclidean":
            return adapted + noise
        return wrapped_normal(adapted, noise, self.curvature)

    # --- ensemble_size -------------------------------------------------------------------------------
    def heads(self) -> list[Head]:
        """Head 0, then ``extra_heads`` (``ensemble_size`` in all)."""
        heads = super().heads()
        if self.ensemble_size > 1:
            heads += [(head["adaptor"], head["discriminator"]) for head in self.extra_heads]
        return heads

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Eq. (9) averaged over the heads: ``s = -(1/K) sum_k D_k(G_k(o))``."""
        normality = [self.normality(adaptor(features), discriminator) for adaptor, discriminator in self.heads()]
        return -(normality[0] if len(normality) == 1 else torch.stack(normality).mean(0))

    # --- feature_standardization ---------------------------------------------------------------------
    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """Channel-last ``o`` (eq. 4), standardised ``(o - mu) / s`` when ``feature_standardization``."""
        if self.feature_standardization:
            features = (features - self.feature_mean) / self.feature_std
        return features

    @torch.no_grad()
    def fit_feature_statistics(
        self, image_batches: Iterable[torch.Tensor], extract: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """Per-channel mean and standard deviation of ``o`` over every location of ``image_batches``.

        Sums are accumulated in float64. A channel's standard deviation is floored at 1e-3 of the
        mean standard deviation, so a (nearly) constant channel cannot blow up after division.
        ``extract`` replaces the feature extractor (e.g. a :class:`~anomalib_hyperbolic.feature_cache.FeatureCache`
        of it, which this pass then fills).

        Raises:
            RuntimeError: without ``feature_standardization``.
            ValueError: when ``image_batches`` is empty.
        """
        if not self.feature_standardization:
            msg = "fit_feature_statistics needs feature_standardization=True."
            raise RuntimeError(msg)
        extract = extract or self.feature_extractor
        moments = ChannelMoments()
        for images in image_batches:
            moments.update(extract(images))
        moments.all_reduce()  # under DDP each rank read its shard of the images
        if moments.count == 0:
            msg = "Cannot fit SimpleNet's feature statistics: the training data yielded no images."
            raise ValueError(msg)
        mean, std = moments.compute()
        std = std.clamp_min(1e-3 * float(std.mean()) + 1e-12)
        self.feature_mean.copy_(mean.to(self.feature_mean))
        self.feature_std.copy_(std.to(self.feature_std))
        self.feature_statistics_fitted.fill_(True)


def build_model(
    relative_noise: bool = DEFAULTS.relative_noise,
    feature_standardization: bool = DEFAULTS.feature_standardization,
    distance: str = DEFAULTS.distance,
    curvature: float = DEFAULTS.curvature,
    discriminator_input: str = DEFAULTS.discriminator_input,
    ensemble_size: int = DEFAULTS.ensemble_size,
    **paper: Any,
) -> SimpleNetModel:
    """The paper's :class:`SimpleNetModel` when every option beyond it is off, else an :class:`ExtendedSimpleNetModel`.

    The options are validated either way (``curvature`` and ``discriminator_input`` have no effect
    with ``distance="euclidean"``, but a bad value is still refused).
    """
    validate_poincare_arguments(distance, curvature, discriminator_input)
    require_positive_int("ensemble_size", ensemble_size)
    if not (relative_noise or feature_standardization or distance != "euclidean" or ensemble_size > 1):
        return SimpleNetModel(**paper)
    return ExtendedSimpleNetModel(
        relative_noise=relative_noise,
        feature_standardization=feature_standardization,
        distance=distance,
        curvature=curvature,
        discriminator_input=discriminator_input,
        ensemble_size=ensemble_size,
        **paper,
    )
