"""What every model needs to train under Lightning's DDP (``--trainer.strategy ddp``) as it does in one process.

Lightning shards the training batches over the ranks and averages the gradients; everything a model
computes *outside* the gradient step (statistics, fitted selections, reference images) is this
module's job. The rule the models follow (docs/multi_gpu.md):

* **Sums** (moments, counts, AFSS losses): each rank reads its own shard of the images
  (:func:`shard`), then :func:`all_reduce_sum` adds them up: every image counted exactly once.
* **Draws and fits** (hyperplanes, reference normals, random selections): computed from a seeded
  source on rank 0's terms and :func:`broadcast` to the others, so every rank holds rank 0's result.
* **Batch norm** in training: :class:`GlobalBatchNorm1d` normalises with the statistics of the
  global batch (all ranks), as one process with the whole batch would; it works with gloo on CPU,
  where ``torch.nn.SyncBatchNorm`` refuses CPU tensors.

Outside a process group every function is the identity, so single-process code paths are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

__all__ = [
    "GlobalBatchNorm1d",
    "all_gather_cat",
    "all_reduce_sum",
    "broadcast",
    "is_distributed",
    "rank",
    "shard",
    "use_global_batch_norm",
    "world_size",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def shard(items: Sequence[T]) -> Sequence[T]:
    """This rank's share of ``items``: every ``world_size``-th item from ``rank`` on (no padding, no repeats)."""
    return items[rank() :: world_size()] if is_distributed() else items


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place, and returned)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order (the sizes along ``dim`` may differ)."""
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.shape[dim]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padding = [0, 0] * (tensor.dim() - dim - 1) + [0, longest - tensor.shape[dim]]
    padded = nn.functional.pad(tensor, padding)
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([part.narrow(dim, 0, int(s)) for part, s in zip(gathered, sizes, strict=True)], dim=dim)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every rank (in place, and returned)."""
    if is_distributed():
        dist.broadcast(tensor.data, src=src)
    return tensor


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the batch over all ranks.

    The mean and variance come from all-reduced sums (differentiable, so the gradient is the one of
    the global batch too); the running statistics are updated with them, identically on every rank.
    In eval mode, and outside a process group, it is ``nn.BatchNorm1d`` (same state dict, same export).
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalise ``(N, C)`` inputs with the global batch statistics when training under DDP."""
        if not (self.training and is_distributed()):
            return super().forward(inputs)
        local = torch.cat([inputs.sum(0), (inputs * inputs).sum(0), inputs.new_tensor([inputs.shape[0]])])
        total = differentiable_all_reduce(local)
        channels = inputs.shape[1]
        count = total[-1]
        mean = total[:channels] / count
        variance = (total[channels:-1] / count - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                # nn.BatchNorm1d's rule: a fixed momentum, or with momentum=None the cumulative average
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = variance * count / (count - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        normalised = (inputs - mean) / torch.sqrt(variance + self.eps)
        return normalised * self.weight + self.bias if self.affine else normalised


def use_global_batch_norm(module: nn.Module) -> nn.Module:
    """Turn every ``nn.BatchNorm1d`` of ``module`` into :class:`GlobalBatchNorm1d` in place (state kept)."""
    for child in module.modules():
        if type(child) is nn.BatchNorm1d:
            child.__class__ = GlobalBatchNorm1d
    return module
