"""What every model needs to train under Lightning's DDP (``--trainer.strategy ddp``) as it does in one process.

Lightning shards the training batches over the ranks and averages the gradients; everything a model
computes *outside* the gradient step (statistics, fitted selections, reference images) is this
module's job. The rule the models follow (docs/multi_gpu.md):

* **Sums** (feature moments and their counts): each rank reads its own shard of the images
  (:func:`shard`), then :func:`all_reduce_sum` adds them up: every image counted exactly once.
* **Draws and fits** (HADNet's hyperplanes and AFSS selection, DRA's reference normals): computed from
  a seeded source alike on every rank and :func:`broadcast` from rank 0, so every rank holds rank 0's result.
* **Batch norm** in training: :class:`GlobalBatchNorm1d` / :class:`GlobalBatchNorm2d` normalise
  with the statistics of the global batch (all ranks), as one process with the whole batch would;
  they work with gloo on CPU, where ``torch.nn.SyncBatchNorm`` refuses CPU tensors.

Outside a process group every function is the identity, so single-process code paths are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
from torch.utils.data import DataLoader, Subset

__all__ = [
    "DistributedStateMixin",
    "GlobalBatchNorm1d",
    "GlobalBatchNorm2d",
    "all_gather_cat",
    "all_reduce_sum",
    "broadcast",
    "is_distributed",
    "rank",
    "shard",
    "shard_loader",
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


def _on_backend_device(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` where the process group's backend can send it (NCCL: the current GPU; gloo: as is)."""
    if dist.get_backend() == "nccl" and not tensor.is_cuda:
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def shard_loader(loader: DataLoader) -> DataLoader:
    """``loader``'s dataset cut to this rank's :func:`shard`, in order (for sums: each image read once overall)."""
    if not is_distributed():
        return loader
    indices = shard(range(len(loader.dataset)))  # type: ignore[arg-type]
    return DataLoader(
        Subset(loader.dataset, indices),
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place, and returned)."""
    if is_distributed():
        sent = _on_backend_device(tensor)
        dist.all_reduce(sent, op=dist.ReduceOp.SUM)
        if sent is not tensor:
            tensor.copy_(sent)
    return tensor


def all_gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order (the sizes along ``dim`` may differ)."""
    if not is_distributed():
        return tensor
    original = tensor.device
    tensor = _on_backend_device(tensor)
    size = torch.tensor([tensor.shape[dim]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padding = [0, 0] * (tensor.dim() - dim - 1) + [0, longest - tensor.shape[dim]]
    padded = nn.functional.pad(tensor, padding)
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded.contiguous())
    parts = [part.narrow(dim, 0, int(s)) for part, s in zip(gathered, sizes, strict=True)]
    return torch.cat(parts, dim=dim).to(original)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every rank (in place, and returned)."""
    if is_distributed():
        sent = _on_backend_device(tensor.data)
        dist.broadcast(sent, src=src)
        if sent is not tensor.data:
            tensor.data.copy_(sent)
    return tensor


class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the batch over all ranks.

    The mean and variance come from all-reduced sums (differentiable, so the gradient is the one of
    the global batch too); the running statistics are updated with them, identically on every rank.
    In eval mode, and outside a process group, it is the torch batch norm it replaces (same state
    dict, same export).
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalise ``(N, C, ...)`` inputs with the global batch statistics when training under DDP."""
        if not (self.training and is_distributed()):
            return super().forward(inputs)
        channels = inputs.shape[1]
        flat = inputs.transpose(0, 1).reshape(channels, -1)
        local = torch.cat([flat.sum(1), (flat * flat).sum(1), flat.new_tensor([flat.shape[1]])])
        total = differentiable_all_reduce(local)
        count = total[-1]
        mean = total[:channels] / count
        variance = (total[channels:-1] / count - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                # torch's rule: a fixed momentum, or with momentum=None the cumulative average
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = variance * count / (count - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        shape = (1, channels) + (1,) * (inputs.dim() - 2)
        normalised = (inputs - mean.view(shape)) / torch.sqrt(variance.view(shape) + self.eps)
        if self.affine:
            normalised = normalised * self.weight.view(shape) + self.bias.view(shape)
        return normalised


class GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    """:class:`nn.BatchNorm1d` with global-batch statistics under DDP."""


class GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    """:class:`nn.BatchNorm2d` with global-batch statistics under DDP."""


_GLOBAL = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}


def use_global_batch_norm(module: nn.Module) -> nn.Module:
    """Turn every ``BatchNorm1d``/``2d`` of ``module`` into its global-batch variant, in place (state kept).

    The counterpart of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` that also runs on CPU (gloo).
    """
    for child in module.modules():
        if type(child) in _GLOBAL:
            child.__class__ = _GLOBAL[type(child)]
    return module


class DistributedStateMixin:
    """Mixin for an ``AnomalibModule``: under DDP, its batch norms use global-batch statistics.

    Lightning calls ``setup`` after the process group exists and before DDP wraps the model.
    """

    def setup(self, stage: str) -> None:
        """Convert the batch norms of ``self.model`` when more than one rank trains."""
        super().setup(stage)  # type: ignore[misc]
        if is_distributed():
            use_global_batch_norm(self.model)  # type: ignore[attr-defined]
