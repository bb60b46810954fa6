"""SimpleNet's feature extractor ``F_phi``, eqs. (1)-(4), and its rank check.

The extractor is linear after the frozen backbone: every level's ``p x p`` neighbourhoods
(``C_l p^2`` values per location) are pooled to ``pretrain_embed_dim`` channels and the levels'
concatenation to ``target_embed_dim``. When a level has fewer values than the channels it is pooled
to, pooling repeats values and the features ``o`` span fewer dimensions than their width; the
isotropic noise of eq. (6) then lands in a null space that no real feature or defect ever reaches,
where it is trivially detectable. :meth:`SimpleNetFeatureExtractor.feature_rank` computes the rank
of that linear map exactly, and the extractor warns when it is below ``target_embed_dim``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_hyperbolic.backbones import create_feature_extractor

from .defaults import require_positive_int


class AdaptiveAvgPoolChannels(nn.Module):
    """``F.adaptive_avg_pool1d`` over the channel axis of a ``(B, C, H, W)`` map, as a fixed gather.

    Output channel ``i`` is the mean of input channels ``floor(i C / D) .. ceil((i + 1) C / D) - 1``
    (PyTorch's adaptive pooling bins, also when ``D > C``). The bins are stored as an index and a
    weight buffer, so the module exports to ONNX/OpenVINO for any ``C``/``D`` (ONNX has no
    adaptive pooling with arbitrary output size).

    Args:
        in_channels: ``C``.
        out_channels: ``D``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            msg = f"Channel counts must be positive, got in_channels={in_channels}, out_channels={out_channels}."
            raise ValueError(msg)
        starts = [(i * in_channels) // out_channels for i in range(out_channels)]
        ends = [-((-(i + 1) * in_channels) // out_channels) for i in range(out_channels)]
        width = max(end - start for start, end in zip(starts, ends, strict=True))
        index = torch.zeros(out_channels, width, dtype=torch.long)
        weight = torch.zeros(out_channels, width)
        for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
            index[i, : end - start] = torch.arange(start, end)
            weight[i, : end - start] = 1.0 / (end - start)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.width = width
        self.uniform = in_channels % out_channels == 0
        self.register_buffer("index", index.flatten(), persistent=False)
        self.register_buffer("weight", weight.view(1, out_channels, width, 1, 1), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, C, H, W)`` to ``(B, D, H, W)``."""
        batch, _, height, width = features.shape
        if self.uniform:  # contiguous equal bins: a reshape and a mean
            return features.reshape(batch, self.out_channels, self.width, height, width).mean(dim=2)
        gathered = features.index_select(1, self.index).reshape(batch, self.out_channels, self.width, height, width)
        return (gathered * self.weight).sum(dim=2)

    def matrix(self) -> torch.Tensor:
        """The pooling as a dense ``(D, C)`` float64 matrix (each row one bin's weights)."""
        matrix = torch.zeros(self.out_channels, self.in_channels, dtype=torch.float64)
        rows = torch.arange(self.out_channels).repeat_interleave(self.width)
        matrix.index_put_((rows, self.index.cpu()), self.weight.flatten().double().cpu(), accumulate=True)
        return matrix


class SimpleNetFeatureExtractor(nn.Module):
    """Feature extractor ``F_phi`` of SimpleNet, eqs. (1)-(4).

    For every level ``l``: the ``p x p`` neighbourhood of each location (zero padded, eq. 1) is
    flattened channel-major (``C_l * p * p`` values) and adaptive-average-pooled to
    ``pretrain_embed_dim`` values (eq. 2, ``f_agg``); levels are resized bilinearly to the largest
    level's grid ``(H0, W0)`` and concatenated (eq. 3), and the concatenation is adaptive-average-
    pooled to ``target_embed_dim`` channels. This is the official implementation's order of
    operations except that pooling happens before resizing: both are linear, one acts across
    channels and the other across locations, so they commute exactly and pooling first is cheaper.

    Warns (``UserWarning``) when the features have lower rank than ``target_embed_dim``
    (:meth:`feature_rank`).

    Args:
        backbone: timm name or local weights file (see :mod:`anomalib_hyperbolic.backbones`).
        layers: Backbone levels to use.
        pre_trained: Load ImageNet weights.
        patch_size: Neighbourhood size ``p`` (odd, >= 1).
        pretrain_embed_dim: Channels per level after neighbourhood aggregation.
        target_embed_dim: Channels of the merged feature map ``o``.
    """

    def __init__(
        self,
        backbone: str | os.PathLike,
        layers: Sequence[str],
        pre_trained: bool,
        patch_size: int,
        pretrain_embed_dim: int,
        target_embed_dim: int,
    ) -> None:
        super().__init__()
        if isinstance(layers, str) or len(layers) == 0:
            msg = f"`layers` must be a non-empty list of layer names, got {layers!r}."
            raise ValueError(msg)
        if not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
            msg = f"`patch_size` must be an odd integer >= 1 (centred neighbourhood), got {patch_size!r}."
            raise ValueError(msg)
        require_positive_int("pretrain_embed_dim", pretrain_embed_dim)
        require_positive_int("target_embed_dim", target_embed_dim)
        self.layers = list(layers)
        self.patch_size = patch_size
        self.feature_extractor = create_feature_extractor(backbone, self.layers, pre_trained=pre_trained)
        # channels-last: the CPU's convolution kernels run Lite0 about 1.4x faster so (same weights, same graph)
        self.feature_extractor.eval().to(memory_format=torch.channels_last)
        channels = self.feature_extractor.out_dims
        self.level_pools = nn.ModuleList(
            AdaptiveAvgPoolChannels(c * patch_size * patch_size, pretrain_embed_dim) for c in channels
        )
        self.merge_pool = AdaptiveAvgPoolChannels(pretrain_embed_dim * len(channels), target_embed_dim)
        self.out_dim = target_embed_dim
        self._warn_on_low_rank()

    def train(self, mode: bool = True) -> SimpleNetFeatureExtractor:
        """Keep the frozen backbone in eval mode (batch-norm statistics stay ImageNet's)."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    def neighbourhoods(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C * p * p, H, W)``: each location's zero-padded ``p x p`` neighbourhood, eq. (1).

        Channel-major like ``nn.Unfold`` (channel ``c``, then row, then column), built from static
        slices so that it exports everywhere.
        """
        p = self.patch_size
        if p == 1:
            return features
        pad = p // 2
        height, width = features.shape[-2:]
        padded = F.pad(features, (pad, pad, pad, pad))
        shifted = [padded[:, :, i : i + height, j : j + width] for i in range(p) for j in range(p)]
        stacked = torch.stack(shifted, dim=2)  # (B, C, p*p, H, W)
        return stacked.flatten(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Local features ``o`` of shape ``(B, target_embed_dim, H0, W0)``, eq. (4)."""
        with torch.no_grad():
            levels = self.feature_extractor(images.contiguous(memory_format=torch.channels_last))
        pooled = [
            pool(self.neighbourhoods(levels[name])) for name, pool in zip(self.layers, self.level_pools, strict=True)
        ]  # SimpleNet eqs. (1)-(2)
        size = max((level.shape[-2:] for level in pooled), key=lambda s: s[0] * s[1])
        resized = [
            level if level.shape[-2:] == size else F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            for level in pooled
        ]
        return self.merge_pool(torch.cat(resized, dim=1))  # SimpleNet eqs. (3)-(4)

    def feature_rank(self) -> int:
        """Rank of the linear map from the levels' neighbourhood values to ``o``: an upper bound on the rank of ``o``.

        A level pool with at least as many inputs as outputs has full row rank (its bins start at
        strictly increasing channels), so it can be dropped from the product; only the levels with
        ``C_l p^2 < pretrain_embed_dim`` and the merge pool enter the (float64) rank computation.
        """
        dim = self.level_pools[0].out_channels
        if all(pool.in_channels >= dim for pool in self.level_pools) and self.merge_pool.in_channels >= self.out_dim:
            return self.out_dim
        blocks = [
            pool.matrix() if pool.in_channels < dim else torch.eye(dim, dtype=torch.float64)
            for pool in self.level_pools
        ]
        return int(torch.linalg.matrix_rank(self.merge_pool.matrix() @ torch.block_diag(*blocks)))

    def _warn_on_low_rank(self) -> None:
        """The null-space trap: warn when ``o`` spans fewer dimensions than it has channels."""
        rank = self.feature_rank()
        if rank >= self.out_dim:
            return
        values = {name: pool.in_channels for name, pool in zip(self.layers, self.level_pools, strict=True)}
        msg = (
            f"SimpleNet features span at most {rank} of their {self.out_dim} dimensions: the levels give "
            f"C x p^2 = {values} values per location, pooled to pretrain_embed_dim = "
            f"{self.level_pools[0].out_channels} and then to target_embed_dim = {self.out_dim}, so pooling "
            f"repeats values. The Gaussian noise of eq. (6) in the {self.out_dim - rank}-dimensional null space "
            "is trivially detectable and no real defect lands there. Use pretrain_embed_dim <= "
            f"{min(values.values())} (the smallest C x p^2) and target_embed_dim <= the levels x pretrain_embed_dim, "
            "or wider levels."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
