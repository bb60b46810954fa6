"""Pieces shared by this package's models (their ``AnomalibModule`` classes and torch models)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from anomalib_hyperbolic.distributed import all_reduce_sum, is_distributed

logger = logging.getLogger(__name__)


class PortableCheckpointMixin:
    """Mixin for an ``AnomalibModule`` whose checkpoints must load whatever evaluator they were trained with.

    A mixin, not an ``AnomalibModule`` subclass, so that anomalib does not list it as a model.

    ``anomalib export --ckpt_path`` (``Engine.export``) rebuilds the model with its default
    ``Evaluator`` and loads the checkpoint strictly. Metric states saved from a custom evaluator
    (e.g. anomalib's ``AUPRO`` keeps ``fpr_limit`` as a buffer) then fail the load with
    "Unexpected key(s)", although they play no part in inference. Such ``evaluator.*`` entries
    are dropped (logged); every other key still loads strictly.
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the checkpoint's evaluator states that this instance's evaluator does not have."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        state = checkpoint.get("state_dict", {})
        own = set(self.state_dict())  # type: ignore[attr-defined]
        stale = [key for key in state if key.startswith("evaluator.") and key not in own]
        for key in stale:
            del state[key]
        if stale:
            logger.info("Checkpoint evaluator states not used by this model's evaluator, skipped: %s", stale)


class ChannelMoments:
    """Per-channel mean and standard deviation over every position of ``(B, C, ...)`` feature batches.

    Sums are accumulated in float64 (and kept on the CPU), so long passes over a training set stay
    exact enough; :meth:`compute` gives the population mean and standard deviation.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add the values of every position of ``features`` (channel axis 1)."""
        flat = features.detach().double().transpose(0, 1).flatten(1)
        total, squares = flat.sum(1).cpu(), flat.pow(2).sum(1).cpu()
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += flat.shape[1]

    def all_reduce(self) -> ChannelMoments:
        """Sum the counts and sums of every rank (under DDP; a no-op in one process); returns ``self``.

        Each rank must have added its own images (``distributed.shard``), so each image counts once.
        """
        if not is_distributed():
            return self
        if self.total is None or self.squares is None:
            msg = "No features were added to the channel statistics on this rank (fewer images than ranks?)."
            raise ValueError(msg)
        packed = all_reduce_sum(torch.cat([self.total, self.squares, self.total.new_tensor([self.count])]))
        channels = self.total.numel()
        self.total, self.squares, self.count = packed[:channels], packed[channels:-1], int(packed[-1])
        return self

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` per channel, float64.

        Raises:
            ValueError: when no features were added.
        """
        if self.total is None or self.squares is None or self.count == 0:
            msg = "No features were added to the channel statistics."
            raise ValueError(msg)
        mean = self.total / self.count
        return mean, (self.squares / self.count - mean.pow(2)).clamp_min(0).sqrt()
