"""Hyperbolic discrepancies and the losses of HypAD.

HypAD (Li et al., CVPR 2023) trains EfficientAD's student-teacher-autoencoder with the Poincaré
distance (HypAD eqs. (2), (6)) in place of EfficientAD's squared Euclidean distance (HypAD eq. (5)).

EfficientAD works with *per-element* squared differences ``(t_k - s_k)^2``: the hard-feature loss
mines the 99.9 % quantile over every element of the ``(B, C, H, W)`` tensor and the anomaly maps
average it over channels. The Poincaré distance instead is one number per feature vector (per
location), and its flat limit is ``2 ||x - y||`` (HypAD eq. (3)), not ``||x - y||^2``. To make
``c = 0`` *exactly* EfficientAD (the paper states that EfficientAD is the special case ``c = 0``,
section 4.3.1) we use the following discrepancy (``mode="tangent"``, the default):

    u = log_0(-h_x (+)_c h_y)          (tangent vector of the Möbius difference)
    D_k = u_k^2                        (per element)

``||log_0(z)|| = artanh(sqrt(c) ||z||) / sqrt(c)`` and ``d_c(x, y) = 2 artanh(sqrt(c) ||-x (+)_c y||) /
sqrt(c)``, so ``sum_k D_k = (d_c(h_x, h_y) / 2)^2``: the channels share the squared (half) geodesic
distance of the location in proportion to the hyperbolic difference vector. For ``c = 0``,
``u = h_y - h_x`` and ``D_k = (x_k - y_k)^2`` exactly (bit for bit), so per-element mining, channel
means and every loss of EfficientAD are recovered. Alternatives (``mode``):

* ``"location"``: ``D = (d_c / 2)^2 / C`` per location (one value per feature vector, mined per
  location). At ``c = 0`` maps and the AE / student-AE losses equal EfficientAD; the hard loss is
  mined per location instead of per element.
* ``"channel"``: every channel is its own 1-d Poincaré ball (``D_k = (d_c(x_k, y_k) / 2)^2``); exact
  EfficientAD at ``c = 0`` too, but not the paper's 384-d ball.
"""

from __future__ import annotations

import torch

from anomalib_hyperbolic.geometry import expmap0, logmap0, mobius_add

__all__ = ["DISCREPANCY_MODES", "embed_to_ball", "hard_feature_loss", "hyperbolic_discrepancy"]

DISCREPANCY_MODES = ("tangent", "location", "channel")


def _check_mode(mode: str) -> None:
    if mode not in DISCREPANCY_MODES:
        msg = f"`discrepancy` must be one of {DISCREPANCY_MODES}, got {mode!r}."
        raise ValueError(msg)


def embed_to_ball(features: torch.Tensor, c: float | torch.Tensor, mode: str = "tangent") -> torch.Tensor:
    """Exponential map at 0 (HypAD eq. (4), ``h0 = 0``) of ``(B, C, H, W)`` features, per location.

    ``mode="channel"`` maps every channel into its own 1-d ball instead.
    """
    _check_mode(mode)
    if mode == "channel":
        return expmap0(features.unsqueeze(-1), c, dim=-1).squeeze(-1)
    return expmap0(features, c, dim=1)


def hyperbolic_discrepancy(
    x: torch.Tensor,
    y: torch.Tensor,
    c: float | torch.Tensor,
    mode: str = "tangent",
) -> torch.Tensor:
    """Per-element hyperbolic discrepancy of two ``(B, C, H, W)`` maps of points on the ball.

    Replaces EfficientAD's ``(x - y) ** 2``; equal to it for ``c == 0`` in modes ``"tangent"`` and
    ``"channel"`` (see the module docstring).

    Args:
        x: Points on the ball (output of :func:`embed_to_ball`), feature axis 1.
        y: Points on the ball, same shape as ``x`` (or broadcastable, e.g. zeros for a penalty).
        c: Curvature ``>= 0``.
        mode: ``"tangent"`` (default), ``"location"`` or ``"channel"``.

    Returns:
        ``(B, C, H, W)`` for ``"tangent"``/``"channel"``, ``(B, 1, H, W)`` for ``"location"``; the
        channel sum (``"tangent"``) or value (``"location"`` times ``C``) is ``(d_c(x, y) / 2)^2``.
    """
    _check_mode(mode)
    if mode == "channel":
        return logmap0(mobius_add(-x.unsqueeze(-1), y.unsqueeze(-1), c, dim=-1), c, dim=-1).squeeze(-1).pow(2)
    tangent = logmap0(mobius_add(-x, y, c, dim=1), c, dim=1)
    if mode == "tangent":
        return tangent.pow(2)
    return tangent.pow(2).mean(dim=1, keepdim=True)


def hard_feature_loss(distance: torch.Tensor, quantile: float = 0.999) -> torch.Tensor:
    """EfficientAD's hard-feature loss: mean of the discrepancies at or above their ``quantile``.

    Uses anomalib's ``reduce_tensor_elems`` (``torch.quantile`` takes at most 2^24 elements), exactly
    as anomalib's EfficientAd does.
    """
    from anomalib.models.image.efficient_ad.torch_model import reduce_tensor_elems

    distance = reduce_tensor_elems(distance)
    d_hard = torch.quantile(distance, quantile)
    return torch.mean(distance[distance >= d_hard])
