"""Pseudo anomalies synthesised from normal images (DRA's; HADNet uses anomalib's Perlin generator).

:func:`cutmix_pseudo_anomalies` is the CutMix-style pseudo anomaly of DRA (Ding et al., CVPR 2022,
eq. 4): ``x' = (1 - M) * x + M * T(C(x))``: a random rectangle ``M`` of the image, colour-jittered
(``C``) and translated (``T``), is pasted back onto the same image. ``C`` is the official code's
``ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1)`` (torchvision's colour
operations with factors drawn from the given generator), so images must be raw ``[0, 1]`` pixels:
denormalise ImageNet-normalised batches first (DRA does). Seeded through a ``torch.Generator``;
returns the masks too.

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


def _color_jitter(
    patch: torch.Tensor,
    strength: tuple[float, float, float, float],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Apply torchvision's ``ColorJitter(*strength)`` to a ``(C, h, w)`` patch in ``[0, 1]``, seeded by ``generator``.

    Factors are drawn as torchvision draws them (brightness, contrast, saturation in
    ``[max(0, 1 - s), 1 + s]``, hue in ``[-h, h]``) and applied in a random order; saturation and hue
    leave a grey patch grey (equal channels stay equal) and do nothing on one-channel images.
    """
    from torchvision.transforms.v2 import functional as TF

    brightness, contrast, saturation, hue = strength
    factors = (
        _uniform(max(0.0, 1 - brightness), 1 + brightness, generator),
        _uniform(max(0.0, 1 - contrast), 1 + contrast, generator),
        _uniform(max(0.0, 1 - saturation), 1 + saturation, generator),
        _uniform(-hue, hue, generator),
    )
    operations = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    active = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    for index in torch.randperm(4, generator=generator).tolist():
        if active[index]:
            patch = operations[index](patch, factors[index])
    return patch


def cutmix_pseudo_anomalies(
    images: torch.Tensor,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: tuple[float, float] = (0.3, 3.3),
    color_jitter: tuple[float, float, float, float] = (0.1, 0.1, 0.1, 0.1),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a colour-jittered, translated rectangle of each image onto itself (DRA eq. 4).

    Args:
        images: Batch ``(B, C, H, W)`` of raw pixels in ``[0, 1]``.
        area_ratio: Range of the rectangle's area as a fraction of the image area (official: 2-15 %).
        aspect_ratio: Range of the rectangle's width/height ratio, sampled log-uniformly (official: 0.3-3.3).
        color_jitter: ``(brightness, contrast, saturation, hue)`` of the patch's ``ColorJitter``
            (official: 0.1 each); zeros switch an operation off.
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
    if len(color_jitter) != 4 or min(color_jitter) < 0 or color_jitter[3] > 0.5:
        msg = f"color_jitter must be 4 values >= 0 (brightness, contrast, saturation, hue <= 0.5), got {color_jitter}."
        raise ValueError(msg)
    batch, _channels, height, width = images.shape
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
        patch = images[index, :, src_y : src_y + cut_h, src_x : src_x + cut_w]
        out[index, :, dst_y : dst_y + cut_h, dst_x : dst_x + cut_w] = _color_jitter(patch, color_jitter, generator)
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
