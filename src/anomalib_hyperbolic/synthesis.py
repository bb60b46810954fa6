"""Pseudo anomalies synthesised from normal images (shared by DRA and HADNet).

:func:`cutmix_pseudo_anomalies` is the CutMix-style pseudo anomaly of DRA (Ding et al., CVPR 2022,
eq. 4): ``x' = (1 - M) * x + M * T(C(x))``: a random rectangle ``M`` of the image, colour-jittered
(``C``) and translated (``T``), is pasted back onto the same image. It works on batches of tensors
in any value range (raw ``[0, 1]`` pixels or ImageNet-normalised ones: the jitter is relative to
the image's own statistics), is seeded through a ``torch.Generator`` and returns the masks too.

anomalib ships a CutPaste in ``anomalib.models.image.foundad.components.cutpaste``; it works on a
single image with Python's global ``random`` and returns no mask, so this batched, seeded variant
with masks is used instead.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cutmix_pseudo_anomalies", "random_pseudo_anomalies"]


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Integer in ``[0, high]``."""
    return int(torch.randint(high + 1, (), generator=generator))


def cutmix_pseudo_anomalies(
    images: torch.Tensor,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: tuple[float, float] = (0.3, 3.3),
    jitter: float = 0.3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a colour-jittered, translated rectangle of each image onto itself (DRA eq. 4).

    Args:
        images: Batch ``(B, C, H, W)``.
        area_ratio: Range of the rectangle's area as a fraction of the image area.
        aspect_ratio: Range of the rectangle's width/height ratio (sampled log-uniformly).
        jitter: Strength of the colour jitter: contrast scaled by ``U(1 - j, 1 + j)``, brightness
            and per-channel tint shifted by ``U(-j, j)`` and ``U(-j/2, j/2)`` image standard deviations.
        generator: Random generator (seed it for reproducible anomalies).

    Returns:
        ``(augmented, masks)``: images of the same shape and dtype, and ``(B, 1, H, W)`` float masks
        (1 where pasted).

    Raises:
        ValueError: on a malformed batch or ranges.
    """
    if images.ndim != 4:
        msg = f"images must have shape (B, C, H, W), got {tuple(images.shape)}."
        raise ValueError(msg)
    if not 0 < area_ratio[0] <= area_ratio[1] < 1:
        msg = f"area_ratio must satisfy 0 < low <= high < 1, got {area_ratio}."
        raise ValueError(msg)
    if not 0 < aspect_ratio[0] <= aspect_ratio[1]:
        msg = f"aspect_ratio must satisfy 0 < low <= high, got {aspect_ratio}."
        raise ValueError(msg)
    if jitter < 0:
        msg = f"jitter must be >= 0, got {jitter}."
        raise ValueError(msg)
    batch, channels, height, width = images.shape
    out = images.clone()
    masks = torch.zeros(batch, 1, height, width, dtype=images.dtype, device=images.device)
    log_low, log_high = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    for index in range(batch):
        area = _uniform(*area_ratio, generator) * height * width
        aspect = math.exp(_uniform(log_low, log_high, generator))
        cut_h = max(1, min(height - 1, round(math.sqrt(area / aspect))))
        cut_w = max(1, min(width - 1, round(math.sqrt(area * aspect))))
        src_y, src_x = _randint(height - cut_h, generator), _randint(width - cut_w, generator)
        dst_y, dst_x = _randint(height - cut_h, generator), _randint(width - cut_w, generator)
        image = images[index]
        patch = image[:, src_y : src_y + cut_h, src_x : src_x + cut_w]
        scale = image.std().clamp_min(1e-6)
        mean = patch.mean(dim=(1, 2), keepdim=True)
        contrast = _uniform(1 - jitter, 1 + jitter, generator)
        brightness = _uniform(-jitter, jitter, generator)
        tint = (torch.rand(channels, 1, 1, generator=generator) - 0.5).to(images) * jitter
        patch = (patch - mean) * contrast + mean + (brightness + tint) * scale
        out[index, :, dst_y : dst_y + cut_h, dst_x : dst_x + cut_w] = patch
        masks[index, :, dst_y : dst_y + cut_h, dst_x : dst_x + cut_w] = 1
    return out, masks


def random_pseudo_anomalies(
    images: torch.Tensor,
    probability: float = 0.5,
    generator: torch.Generator | None = None,
    **cutmix_kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn each image into a CutMix pseudo anomaly with the given probability.

    Returns:
        ``(images, is_pseudo, masks)``: the batch with the chosen images replaced, a ``(B,)`` bool
        tensor telling which, and ``(B, 1, H, W)`` masks (zero for untouched images).
    """
    if not 0 <= probability <= 1:
        msg = f"probability must be in [0, 1], got {probability}."
        raise ValueError(msg)
    chosen = torch.rand(images.shape[0], generator=generator) < probability
    out = images.clone()
    masks = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=images.dtype, device=images.device)
    if chosen.any():
        index = chosen.nonzero().flatten().to(images.device)
        augmented, pasted = cutmix_pseudo_anomalies(images[index], generator=generator, **cutmix_kwargs)  # type: ignore[arg-type]
        out[index] = augmented
        masks[index] = pasted
    return out, chosen.to(images.device), masks
