"""Tiny CPU configurations for the shared model harness (tests/integration/test_model_harness.py).

Every class exported by ``anomalib_hyperbolic.models`` must have an entry here: the harness test
fails for a registered model without one. Each model issue adds its model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class HarnessCase:
    """How to build and train one model for the harness.

    Attributes:
        init_args: Constructor arguments for a tiny, offline run (no hub downloads:
            ``pre_trained=False`` or a local weights file).
        max_epochs: Trainer epochs for ``Engine.fit``.
        max_steps: Optional cap on optimisation steps (``-1`` = none).
        image_size: Side of the square images given to the model.
        datamodule_factory: ``f(dataset_root, image_size) -> AnomalibDataModule`` when the model
            needs something other than the default MVTec-format datamodule over synthetic data
            (e.g. labelled anomalies in the training split for DRA).
    """

    init_args: dict[str, Any] = field(default_factory=dict)
    max_epochs: int = 1
    max_steps: int = -1
    image_size: int = 64
    datamodule_factory: Callable[[Path, int], Any] | None = None


HARNESS_CASES: dict[str, HarnessCase] = {
    "HADNet": HarnessCase(
        init_args={
            "backbone": "resnet18",
            "layers": ["layer1", "layer2", "layer3"],
            "pre_trained": False,
            "num_selected": [16, 16, 16],
            "num_residuals": 16,
            "discriminator_widths": [16, 8],
            "init_batches": 2,
            "hst_steps": 2,
        },
        max_epochs=1,
        image_size=64,
    ),
}
