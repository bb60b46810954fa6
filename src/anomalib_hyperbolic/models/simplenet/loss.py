"""Truncated L1 loss of SimpleNet, eqs. (7)-(8)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .defaults import DEFAULTS


class TruncatedL1Loss(nn.Module):
    """``l = max(0, th+ - D(q)) + max(0, th- + D(q-))``, averaged over locations and images.

    SimpleNet eq. (7) writes the second term as ``max(0, -th^- + D(q-))`` with ``th^- = -0.5``;
    here both truncation terms are given as positive margins (``th_pos = th_neg = 0.5`` is the
    paper default), so normal features are pushed to ``D >= th_pos`` and anomalous ones to
    ``D <= -th_neg``. Eq. (8) sums ``l / (H0 W0)`` over images; we average over the batch as
    the official code does (the same objective up to a constant factor).

    Args:
        th_pos: Margin for normal features (``th^+``).
        th_neg: Margin for anomalous features (``-th^-`` in the paper's sign convention).
    """

    def __init__(self, th_pos: float = DEFAULTS.th_pos, th_neg: float = DEFAULTS.th_neg) -> None:
        super().__init__()
        for name, value in (("th_pos", th_pos), ("th_neg", th_neg)):
            if not math.isfinite(value) or value < 0:
                msg = f"`{name}` (truncation term of SimpleNet eq. 7) must be a finite number >= 0, got {value!r}."
                raise ValueError(msg)
        self.th_pos = th_pos
        self.th_neg = th_neg

    def forward(self, normal_scores: torch.Tensor, anomalous_scores: torch.Tensor) -> torch.Tensor:
        """Loss from discriminator outputs on normal (``D(q)``) and anomalous (``D(q-)``) features."""
        normal_term = torch.clamp(self.th_pos - normal_scores, min=0)  # SimpleNet eq. (7), first term
        anomalous_term = torch.clamp(anomalous_scores + self.th_neg, min=0)  # SimpleNet eq. (7), second term
        return normal_term.mean() + anomalous_term.mean()  # SimpleNet eq. (8)

    @torch.no_grad()
    def on_margin(
        self, normal_scores: torch.Tensor, anomalous_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which normal scores reach ``th_pos`` and which anomalous ones fall below ``-th_neg`` (bool masks).

        Their means are the official code's training diagnostics ``p_true`` (``D(q) >= th+``) and
        ``p_fake`` (``D(q-) < -th-``): the shares of features on the right side of their margin,
        where their loss term is zero.
        """
        return normal_scores >= self.th_pos, anomalous_scores < -self.th_neg
