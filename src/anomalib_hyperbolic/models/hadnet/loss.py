"""Losses of HADNet.

* Segmentation loss of the discriminator: binary cross-entropy plus soft Dice on the anomaly
  logits against the (synthetic or real) anomaly mask. RealNet uses a 2-class cross-entropy;
  the Dice term is added because HADNet is judged by mIoU (eqs. 14-15) and anomalies cover a few
  percent of the pixels. This package's options (issue 32, none of them the paper's): the
  pixel term as class-balanced BCE or focal loss (``seg_loss``), and Dice per defect image
  (``dice_per_image``).
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
from torchvision.ops import sigmoid_focal_loss

from .defaults import DEFAULTS

#: the values of ``HADNetLoss(seg_loss=...)``
SEG_LOSSES = ("bce_dice", "balanced_bce_dice", "focal_dice")


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - Dice`` of ``sigmoid(logits)`` against binary masks, over the whole batch."""
    probs = torch.sigmoid(logits)
    intersection = (probs * masks).sum()
    return 1 - (2 * intersection + eps) / (probs.sum() + masks.sum() + eps)


def per_image_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean ``1 - Dice`` over the images with defect pixels (``(B, 1, H, W)``); 0 when there is none.

    Images without defect pixels are left out (their Dice is 0 or 1 whatever they predict; the
    pixel term handles them), so each defect image weighs the same, whatever its defect's size.
    """
    probs = torch.sigmoid(logits).flatten(1)
    masks = masks.flatten(1)
    dice = (2 * (probs * masks).sum(1) + eps) / (probs.sum(1) + masks.sum(1) + eps)
    defect = (masks.sum(1) > 0).to(dice.dtype)
    # a sum over zero weights, not boolean indexing: no host-device sync, and the graph stays connected
    return ((1 - dice) * defect).sum() / defect.sum().clamp_min(1.0)


def balanced_bce(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with the positive class weighted by the negative/positive ratio (clamped to [1, 100])."""
    positives = masks.sum()
    negatives = masks.numel() - positives
    pos_weight = (negatives / positives.clamp_min(1.0)).clamp(1.0, 100.0).detach()
    return F.binary_cross_entropy_with_logits(logits, masks, pos_weight=pos_weight)


class HADNetLoss(nn.Module):
    """Total training loss: ``seg_weight * (pixel term + dice_weight * Dice) + recon_weight * MSE``.

    Args:
        seg_weight: Weight of the discriminator (segmentation) loss.
        dice_weight: Weight of the Dice term inside the segmentation loss.
        recon_weight: Weight of the feature reconstruction loss.
        seg_loss: The pixel term: ``"bce_dice"`` (mean BCE), ``"balanced_bce_dice"`` (BCE with the
            positives weighted by the batch's negative/positive ratio, :func:`balanced_bce`) or
            ``"focal_dice"`` (torchvision's ``sigmoid_focal_loss``, mean over pixels).
        focal_alpha: Focal loss weight of the positives (``< 0``: none); ``"focal_dice"`` only.
        focal_gamma: Focal loss focusing exponent; ``"focal_dice"`` only.
        dice_per_image: Dice per image over the defect images (:func:`per_image_dice_loss`) instead of
            one Dice over the batch (:func:`soft_dice_loss`).

    Raises:
        ValueError: unknown ``seg_loss``.
    """

    def __init__(
        self,
        seg_weight: float = DEFAULTS.seg_weight,
        dice_weight: float = DEFAULTS.dice_weight,
        recon_weight: float = DEFAULTS.recon_weight,
        seg_loss: str = DEFAULTS.seg_loss,
        focal_alpha: float = DEFAULTS.focal_alpha,
        focal_gamma: float = DEFAULTS.focal_gamma,
        dice_per_image: bool = DEFAULTS.dice_per_image,
    ) -> None:
        super().__init__()
        if seg_loss not in SEG_LOSSES:
            msg = f"`seg_loss` must be one of {list(SEG_LOSSES)}, got {seg_loss!r}."
            raise ValueError(msg)
        self.seg_weight = seg_weight
        self.dice_weight = dice_weight
        self.recon_weight = recon_weight
        self.seg_loss = seg_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.dice_per_image = dice_per_image

    def pixel_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The per-pixel term of the segmentation loss (``seg_loss``), a mean over the batch's pixels."""
        if self.seg_loss == "balanced_bce_dice":
            return balanced_bce(logits, masks)
        if self.seg_loss == "focal_dice":
            return sigmoid_focal_loss(logits, masks, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="mean")
        return F.binary_cross_entropy_with_logits(logits, masks)

    def segmentation(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Pixel term + ``dice_weight`` x Dice of the logits ``(B, 1, H, W)`` against masks of the same shape."""
        dice = per_image_dice_loss(logits, masks) if self.dice_per_image else soft_dice_loss(logits, masks)
        return self.pixel_loss(logits, masks) + self.dice_weight * dice

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
