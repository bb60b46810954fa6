"""Pieces shared by this package's ``AnomalibModule`` classes."""

from __future__ import annotations

import logging
from typing import Any

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
