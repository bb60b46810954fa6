"""The per-step learning-rate decay of HypAD (and of EfficientAD's paper), shared with the baselines."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["step_decay_scheduler"]


def step_decay_scheduler(
    optimizer: torch.optim.Optimizer, trainer: Any, decay_at: float, gamma: float, model_name: str
) -> dict[str, Any]:
    """Lightning ``lr_scheduler`` entry: ``StepLR`` stepped every optimisation step (EfficientAD's decay).

    The learning rate is multiplied by ``gamma`` once ``decay_at`` of the training steps are done;
    the step count is the earlier of ``max_steps`` and ``max_epochs`` times the epoch length, as
    Lightning stops at whichever comes first.

    Raises:
        ValueError: neither ``max_epochs`` nor ``max_steps`` is finite.
    """
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    if (max_epochs is None or max_epochs < 0) and max_steps < 0:
        msg = f"{model_name} needs a finite number of steps or epochs (max_epochs or max_steps)."
        raise ValueError(msg)
    if max_epochs is None or max_epochs < 0:
        num_steps = max_steps
    else:
        epoch_steps = max_epochs * len(trainer.datamodule.train_dataloader())
        num_steps = epoch_steps if max_steps < 0 else min(max_steps, epoch_steps)
    step_size = max(1, int(decay_at * num_steps))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    return {"scheduler": scheduler, "interval": "step"}
