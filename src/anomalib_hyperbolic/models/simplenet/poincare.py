"""Beyond the paper: SimpleNet on the Poincaré ball (``distance="poincare"``).

The pieces of one head that change, each a drop-in for the paper's:

* :class:`PoincareAdaptor`: the paper's adaptor followed by ``exp_0``: the adapted features are
  points ``x = exp_0(q)`` on the ball of curvature ``-c``.
* :func:`wrapped_normal`: the anomalous features of eq. (6) as a wrapped normal around each point.
* :class:`LogmapDiscriminator` (``discriminator_input="logmap"``): the paper's discriminator on
  ``log_0(x)``; normal features reach it unchanged, so only the anomaly generation is hyperbolic.
* :class:`DistanceDiscriminator` (``discriminator_input="distance"``): the first linear layer is
  replaced by geodesic distances to learned prototypes ``exp_0(w_k)`` on the ball.

As ``c -> 0`` all of them become the paper's. :class:`~.extensions.ExtendedSimpleNetModel` plugs them in.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anomalib_hyperbolic.geometry import expmap, expmap0, logmap0, pairwise_poincare_distance, validate_curvature

from .defaults import DISCRIMINATOR_INPUTS, DISTANCES, require_choice
from .torch_model import Discriminator, Head, init_linear


def validate_poincare_arguments(distance: str, curvature: float, discriminator_input: str) -> None:
    """Raise ``ValueError`` naming the offending argument (the curvature is checked for either distance)."""
    require_choice("distance", distance, DISTANCES)
    require_choice("discriminator_input", discriminator_input, DISCRIMINATOR_INPUTS)
    try:
        validate_curvature(curvature, "curvature")
    except (TypeError, ValueError) as error:
        msg = f"`curvature` must be a finite number >= 0, got {curvature!r}."
        raise ValueError(msg) from error
    if distance == "poincare" and curvature == 0:
        msg = "`curvature` must be > 0 with distance='poincare' (0 is the Euclidean model: use distance='euclidean')."
        raise ValueError(msg)


class PoincareAdaptor(nn.Linear):
    """``x = exp_0(G_theta(o))``: the paper's linear adaptor (eq. 5), then onto the ball.

    Args:
        dim: Feature dimension (in and out).
        bias: Bias in the linear layer.
        curvature: Ball curvature ``c > 0``.
    """

    def __init__(self, dim: int, bias: bool, curvature: float) -> None:
        super().__init__(dim, dim, bias=bias)
        self.curvature = curvature

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Points on the ball, ``(..., C) -> (..., C)``."""
        return expmap0(super().forward(features), self.curvature)


class LogmapDiscriminator(Discriminator):
    """The paper's discriminator on ``log_0(x)`` of points ``x`` on the ball."""

    def __init__(self, in_dim: int, hidden: int, negative_slope: float, curvature: float) -> None:
        super().__init__(in_dim, hidden, negative_slope)
        self.curvature = curvature

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """``Linear(log_0(x))``."""
        return self.input_layer(logmap0(features, self.curvature))


class DistanceDiscriminator(Discriminator):
    """First layer: geodesic distances from each point to ``hidden`` learned prototypes ``exp_0(w_k)``.

    An RBF-like layer of the ball (one matmul, :func:`~anomalib_hyperbolic.geometry.pairwise_poincare_distance`),
    followed by the paper's ``BatchNorm -> LeakyReLU -> Linear``.
    """

    def __init__(self, in_dim: int, hidden: int, negative_slope: float, curvature: float) -> None:
        super().__init__(in_dim, hidden, negative_slope)
        self.curvature = curvature

    def build_input_layer(self, in_dim: int, hidden: int) -> None:
        """Prototypes in the tangent space at the origin, spread like typical features."""
        self.input_layer = None
        self.prototypes = nn.Parameter(torch.randn(hidden, in_dim) / math.sqrt(in_dim))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Geodesic distances ``(N, C) -> (N, hidden)``."""
        return pairwise_poincare_distance(features, expmap0(self.prototypes, self.curvature), self.curvature)


def new_poincare_head(
    dim: int, bias: bool, hidden: int, negative_slope: float, curvature: float, discriminator_input: str
) -> Head:
    """A freshly initialised :class:`PoincareAdaptor` and the discriminator that ``discriminator_input`` names."""
    adaptor = PoincareAdaptor(dim, bias, curvature)
    adaptor.apply(init_linear)
    discriminator = LogmapDiscriminator if discriminator_input == "logmap" else DistanceDiscriminator
    return adaptor, discriminator(dim, hidden, negative_slope, curvature)


def wrapped_normal(points: torch.Tensor, noise: torch.Tensor, curvature: float) -> torch.Tensor:
    """Anomalous points around ``points``: tangent ``noise`` at the origin, transported to each point, ``exp_x``.

    The noise is parallel-transported to ``x`` (scaled by ``lambda_0 / lambda_x``) and mapped with
    ``exp_x``, so every anomalous point lies at geodesic distance ``2 ||eps||`` from its normal
    feature whatever ``x``'s position, and the construction equals ``x + eps`` as ``c -> 0``.
    """
    lam = 2.0 / (1.0 - curvature * points.pow(2).sum(-1, keepdim=True)).clamp_min(1e-6)
    return expmap(points, noise * (2.0 / lam), curvature)
