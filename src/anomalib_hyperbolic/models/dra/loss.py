"""Losses of DRA: deviation loss (default), BCE and focal loss (DRA appendix B.1.1 and C.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .defaults import DEFAULTS

__all__ = ["LOSSES", "BinaryFocalLoss", "DRALoss", "DeviationLoss", "build_loss"]

LOSSES = ("deviation", "bce", "focal")


class DeviationLoss(nn.Module):
    """Deviation loss with a Gaussian prior (DevNet; DRA appendix B.1.1, eqs. 10-11).

    ``dev(s) = (s - mean(r)) / std(r)`` with ``r`` drawn from ``N(0, 1)`` (eq. 10);
    ``loss = (1 - y) |dev| + y max(0, margin - dev)`` (eq. 11): normal scores are pulled to the prior
    mean, anomalous ones pushed at least ``margin`` standard deviations above it.

    Args:
        margin: ``a`` of eq. 11, a Z-score confidence bound (5 in DevNet/DRA).
        num_prior: Size of the prior score sample ``r``.
    """

    def __init__(self, margin: float = DEFAULTS.margin, num_prior: int = DEFAULTS.num_prior) -> None:
        super().__init__()
        if margin <= 0:
            msg = f"margin must be > 0, got {margin}."
            raise ValueError(msg)
        self.margin = margin
        self.num_prior = num_prior

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean deviation loss of ``scores`` (any shape) against 0/1 ``targets`` of the same shape."""
        prior = torch.randn(self.num_prior, device=scores.device, dtype=scores.dtype)
        deviation = (scores - prior.mean()) / prior.std()
        targets = targets.to(scores.dtype)
        inlier = deviation.abs()
        outlier = (self.margin - deviation).clamp_min(0)
        return ((1 - targets) * inlier + targets * outlier).mean()


class BinaryFocalLoss(nn.Module):
    """Binary focal loss on logits (Lin et al.), the ``focal`` option of DRA appendix C.2.

    Args:
        gamma: Focusing parameter.
        alpha: Weight of the positive (anomalous) class; ``None`` for none.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean focal loss."""
        targets = targets.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_true = torch.exp(-bce)
        loss = (1 - p_true) ** self.gamma * bce
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.mean()


class _BCE(nn.Module):
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def build_loss(name: str, margin: float = DEFAULTS.margin) -> nn.Module:
    """The per-head loss called ``name`` (``deviation``, ``bce`` or ``focal``)."""
    if name == "deviation":
        return DeviationLoss(margin=margin)
    if name == "bce":
        return _BCE()
    if name == "focal":
        return BinaryFocalLoss()
    msg = f"loss must be one of {LOSSES}, got {name!r}."
    raise ValueError(msg)


class DRALoss(nn.Module):
    """Sum of the four heads' losses, each head seeing the samples of its own task (DRA eq. 1).

    Sample kinds: 0 normal, 1 seen (labelled) anomaly, 2 pseudo anomaly.

    * seen abnormality head (eq. 2): normal vs seen anomalies (pseudo anomalies left out);
    * pseudo abnormality head (eq. 5): normal vs pseudo anomalies (seen anomalies left out);
    * latent residual head (eq. 8): normal vs seen and pseudo anomalies;
    * normality head (eq. 9): its target is 1 for normal samples, so its score grows with
      normality and is subtracted at inference.

    Args:
        loss: Per-head loss, ``deviation`` (default), ``bce`` or ``focal``.
        margin: Deviation-loss margin.
    """

    def __init__(self, loss: str = DEFAULTS.loss, margin: float = DEFAULTS.margin) -> None:
        super().__init__()
        self.criterion = build_loss(loss, margin)

    def _head(self, scores: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if not bool(keep.any()):
            return scores.sum() * 0
        return self.criterion(scores[keep], targets[keep])

    def forward(self, scores: dict[str, torch.Tensor], kinds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-head losses and their sum (``"loss"``).

        Args:
            scores: ``(B,)`` image scores of the heads ``seen``, ``pseudo``, ``residual``, ``normal``.
            kinds: ``(B,)`` sample kinds (0 normal, 1 seen anomaly, 2 pseudo anomaly).
        """
        anomalous = kinds != 0
        everything = torch.ones_like(anomalous)
        losses = {
            "seen": self._head(scores["seen"], anomalous, kinds != 2),
            "pseudo": self._head(scores["pseudo"], anomalous, kinds != 1),
            "residual": self._head(scores["residual"], anomalous, everything),
            "normal": self._head(scores["normal"], ~anomalous, everything),
        }
        losses["loss"] = losses["seen"] + losses["pseudo"] + losses["residual"] + losses["normal"]
        return losses
