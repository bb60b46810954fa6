"""Losses of HADNet.

* Segmentation loss of the discriminator: binary cross-entropy plus soft Dice on the anomaly
  logits against the (synthetic or real) anomaly mask. RealNet uses a 2-class cross-entropy;
  the Dice term is added because HADNet is judged by mIoU (eqs. 14-15) and anomalies cover a few
  percent of the pixels.
* Reconstruction loss: MSE between the reconstruction of the anomalous features and the normal
  features (RealNet's FeatureMSELoss). With real anomalies (supervised-mask mode) there is no
  normal twin image, so the loss is restricted to the pixels outside the mask.
* Hyperplane loss (HST pre-training): class-balanced binary cross-entropy of the hyperbolic
  hyperplane classifier of every layer against the mask resized to the layer's grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .defaults import DEFAULTS


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - Dice`` of ``sigmoid(logits)`` against binary masks, over the whole batch."""
    probs = torch.sigmoid(logits)
    intersection = (probs * masks).sum()
    return 1 - (2 * intersection + eps) / (probs.sum() + masks.sum() + eps)


def balanced_bce(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with the positive class weighted by the negative/positive ratio."""
    positives = masks.sum()
    negatives = masks.numel() - positives
    pos_weight = (negatives / positives.clamp_min(1.0)).clamp(1.0, 100.0).detach()
    return F.binary_cross_entropy_with_logits(logits, masks, pos_weight=pos_weight)


class HADNetLoss(nn.Module):
    """Total training loss: ``seg_weight * (BCE + dice_weight * Dice) + recon_weight * MSE``.

    Args:
        seg_weight: Weight of the discriminator (segmentation) loss.
        dice_weight: Weight of the Dice term inside the segmentation loss.
        recon_weight: Weight of the feature reconstruction loss.
    """

    def __init__(
        self,
        seg_weight: float = DEFAULTS.seg_weight,
        dice_weight: float = DEFAULTS.dice_weight,
        recon_weight: float = DEFAULTS.recon_weight,
    ) -> None:
        super().__init__()
        self.seg_weight = seg_weight
        self.dice_weight = dice_weight
        self.recon_weight = recon_weight

    def segmentation(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """BCE + Dice of the anomaly logits ``(B, 1, H, W)`` against masks of the same shape."""
        bce = F.binary_cross_entropy_with_logits(logits, masks)
        return bce + self.dice_weight * soft_dice_loss(logits, masks)

    @staticmethod
    def reconstruction(
        reconstructions: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over layers of the (optionally normal-pixel-only) MSE ``||Phi_i - phi_i||^2``.

        Args:
            reconstructions: ``Phi_i`` per layer.
            targets: Normal features per layer (detached).
            masks: ``(B, 1, H, W)`` anomaly masks; when given, only pixels outside them count.
        """
        losses = []
        for recon, target in zip(reconstructions, targets, strict=True):
            error = (recon - target.detach()).pow(2).mean(dim=1, keepdim=True)
            if masks is None:
                losses.append(error.mean())
                continue
            keep = 1 - (F.interpolate(masks, size=error.shape[-2:], mode="bilinear", align_corners=False) > 0).float()
            losses.append((error * keep).sum() / keep.sum().clamp_min(1.0))
        return torch.stack(losses).mean()

    def forward(
        self,
        logits: torch.Tensor,
        masks: torch.Tensor,
        reconstructions: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        recon_masks: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "seg_loss", "recon_loss"}``."""
        seg = self.segmentation(logits, masks)
        recon = self.reconstruction(reconstructions, targets, recon_masks)
        return {"loss": self.seg_weight * seg + self.recon_weight * recon, "seg_loss": seg, "recon_loss": recon}


def hyperplane_loss(logits: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE of each layer's hyperplane logits ``(B, 1, h, w)`` against resized masks."""
    losses = []
    for layer_logits in logits:
        resized = F.interpolate(masks, size=layer_logits.shape[-2:], mode="bilinear", align_corners=False)
        target = (resized > 0.5).float()
        losses.append(balanced_bce(layer_logits, target))
    return torch.stack(losses).mean()
