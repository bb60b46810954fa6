"""anomalib's EfficientAd with its learning-rate decay stepped per optimisation step, as HypAD's.

anomalib 2.7's ``EfficientAd.configure_optimizers`` returns its ``StepLR`` (x0.1 after 95 % of the
training steps) without ``"interval": "step"``, so Lightning steps it once per epoch: the step
size counts epochs, and the decay never happens when training is bounded by ``max_steps``.
:class:`EfficientAdStepSchedule` keeps EfficientAd's optimiser (Adam on student and autoencoder,
its ``lr`` and ``weight_decay``) and uses HypAD's scheduler
(:func:`anomalib_hyperbolic.models.hypad.lightning_model.step_decay_scheduler`), so a benchmark of
HypAD against EfficientAD compares the same training recipe.
"""

from __future__ import annotations

from typing import Any

import torch
from anomalib.models import EfficientAd

from anomalib_hyperbolic.models.hypad.lightning_model import step_decay_scheduler

__all__ = ["EfficientAdStepSchedule"]


class EfficientAdStepSchedule(EfficientAd):
    """anomalib's ``EfficientAd`` whose ``StepLR`` decays at 95 % of the optimisation steps.

    Takes anomalib's ``EfficientAd`` arguments unchanged.
    """

    #: Fraction of the training steps after which the learning rate is multiplied by ``LR_DECAY_GAMMA``.
    LR_DECAY_AT = 0.95
    LR_DECAY_GAMMA = 0.1

    def configure_optimizers(self) -> dict[str, Any]:
        """EfficientAd's Adam with HypAD's per-step ``StepLR`` (x0.1 after 95 % of the steps)."""
        optimizer = torch.optim.Adam(
            list(self.model.student.parameters()) + list(self.model.ae.parameters()),
            lr=self.lr,
            weight_decay=self.weight_decay,
        )
        scheduler = step_decay_scheduler(
            optimizer, self.trainer, self.LR_DECAY_AT, self.LR_DECAY_GAMMA, type(self).__name__
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
