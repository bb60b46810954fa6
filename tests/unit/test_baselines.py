"""Baselines: EfficientAd with HypAD's per-step learning-rate decay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.models import EfficientAd
from lightning.pytorch import Trainer
from lightning.pytorch.core.optimizer import _configure_optimizers, _configure_schedulers_automatic_opt

from anomalib_hyperbolic.baselines import EfficientAdStepSchedule
from anomalib_hyperbolic.models import HypAD
from anomalib_hyperbolic.models.hypad.lightning_model import step_decay_scheduler


# ----------------------------------------------------------------------------- EfficientAd schedule
def _lr_per_step(model: object, trainer: Trainer, steps: int, steps_per_epoch: int) -> list[float]:
    """The learning rate after each of ``steps`` optimiser steps, scheduled as Lightning's fit loop does.

    Lightning parses ``configure_optimizers`` (defaults included), then steps a scheduler after every
    ``frequency`` optimiser steps (``interval="step"``) or epochs (``interval="epoch"``).
    """
    model.trainer = trainer
    optimizers, schedulers, _ = _configure_optimizers(model.configure_optimizers())
    (optimizer,) = optimizers
    (config,) = _configure_schedulers_automatic_opt(schedulers, None)
    lrs = []
    for step in range(1, steps + 1):
        optimizer.step()
        boundary = step if config.interval == "step" else step // steps_per_epoch
        if (config.interval == "step" or step % steps_per_epoch == 0) and boundary % config.frequency == 0:
            config.scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_efficientad_step_schedule_decays_at_the_same_step_as_hypad() -> None:
    """max_steps=20: both decay x0.1 after step 19 (95 % of 20), although an epoch would be 100 batches."""
    trainer = Trainer(max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    hypad = HypAD(pretrained_teacher=False, imagenet_dir=None)
    baseline = EfficientAdStepSchedule(imagenet_dir="unused")
    expected = [1e-4] * 18 + [1e-5] * 2
    for model in (hypad, baseline):
        np.testing.assert_allclose(_lr_per_step(model, trainer, steps=20, steps_per_epoch=100), expected, rtol=1e-12)
    assert baseline.configure_optimizers()["optimizer"].defaults["weight_decay"] == EfficientAd().weight_decay


class _EpochTrainer:
    """The trainer attributes the schedule reads: 2 epochs of 10 batches, or no limit."""

    def __init__(self, max_epochs: int | None, max_steps: int) -> None:
        self.max_epochs, self.max_steps = max_epochs, max_steps
        self.datamodule = type("DataModule", (), {"train_dataloader": staticmethod(lambda: range(10))})()


def test_step_decay_scheduler_counts_epochs_and_needs_a_limit() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    config = step_decay_scheduler(optimizer, _EpochTrainer(max_epochs=2, max_steps=-1), 0.95, 0.1, "HypAD")
    assert config["interval"] == "step"
    assert config["scheduler"].step_size == 19  # int(0.95 * 2 * 10)
    capped = step_decay_scheduler(optimizer, _EpochTrainer(max_epochs=2, max_steps=8), 0.95, 0.1, "HypAD")
    assert capped["scheduler"].step_size == 7  # int(0.95 * min(8, 20))
    with pytest.raises(ValueError, match="EfficientAdStepSchedule needs a finite number of steps"):
        step_decay_scheduler(
            optimizer, _EpochTrainer(max_epochs=None, max_steps=-1), 0.95, 0.1, "EfficientAdStepSchedule"
        )


def test_anomalib_efficientad_decays_per_epoch() -> None:
    """Why EfficientAdStepSchedule exists: anomalib's StepLR is stepped per epoch, so it never decays here.

    If this fails, anomalib steps EfficientAd's scheduler per step, and EfficientAdStepSchedule can go.
    ``max_epochs=-1``: anomalib's method compares ``max_epochs < 0`` and fails on Lightning's ``None``.
    """
    trainer = Trainer(max_steps=20, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    model = EfficientAd(imagenet_dir="unused")
    model.trainer = trainer
    _, schedulers, _ = _configure_optimizers(model.configure_optimizers())
    assert _configure_schedulers_automatic_opt(schedulers, None)[0].interval == "epoch"
    assert _lr_per_step(model, trainer, steps=20, steps_per_epoch=100) == [1e-4] * 20
