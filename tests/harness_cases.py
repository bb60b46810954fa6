"""Tiny CPU configurations for the shared model harness (tests/integration/test_model_harness.py).

Every class exported by ``anomalib_hyperbolic.models`` must have an entry here: the harness test
fails for a registered model without one. Each model issue adds its model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The smallest HADNet the unit tests build (random ResNet-18, two levels): shared by its test files.
TINY_HADNET: dict[str, Any] = {
    "backbone": "resnet18",
    "layers": ("layer1", "layer2"),
    "pre_trained": False,
    "num_selected": (8, 8),
    "num_residuals": 8,
    "discriminator_widths": (8, 4),
    "score_pool_size": 4,
}


def tiny_hadnet(**overrides: Any) -> Any:
    """:data:`TINY_HADNET` at 32 px with one initialisation batch and one HST step, no visualizer."""
    from anomalib_hyperbolic.models import HADNet

    kwargs: dict[str, Any] = {
        **TINY_HADNET,
        "init_batches": 1,
        "hst_steps": 1,
        "pre_processor": HADNet.configure_pre_processor((32, 32)),
        "visualizer": False,
    }
    return HADNet(**{**kwargs, **overrides})


def tiny_magnetic_tile(root: Path, split_mode: str = "ratio") -> Any:
    """A ``MagneticTile`` datamodule over a generated copy: batches of 4, no workers."""
    from anomalib_hyperbolic.data import MagneticTile

    return MagneticTile(root=root, split_mode=split_mode, train_batch_size=4, eval_batch_size=4, num_workers=0)


def tiny_cpu_engine(run_dir: Path, epochs: int = 1, callbacks: list | None = None) -> Any:
    """An anomalib ``Engine`` for a few CPU epochs: no logger, no progress bar."""
    from anomalib.engine import Engine

    return Engine(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=run_dir,
        callbacks=callbacks or [],
    )


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


def _dra_datamodule(root: Path, image_size: int) -> Any:
    """The synthetic MVTec-format data with 2 labelled anomalies in the training split (general protocol)."""
    from anomalib.data import MVTecAD

    from anomalib_hyperbolic.data import FewShotAnomalies

    del image_size  # the model's pre-processor resizes
    inner = MVTecAD(root=root, category="synthetic", train_batch_size=8, eval_batch_size=4, num_workers=0)
    return FewShotAnomalies(inner, num_anomalies=2, max_anomalies=2, seed=0, train_batches_per_epoch=2)


HARNESS_CASES: dict[str, HarnessCase] = {
    "SimpleNet": HarnessCase(
        init_args={
            "backbone": "resnet18",
            "layers": ["layer2", "layer3"],
            "pre_trained": False,
            "pretrain_embed_dim": 64,
            "target_embed_dim": 64,
            "discriminator_hidden": 32,
        },
        max_epochs=1,
    ),
    # EfficientAD's autoencoder needs >= 256 px (5 stride-2 convolutions then an 8x8 kernel).
    # Offline: random-init teacher, no ImageNet penalty folder.
    "HypAD": HarnessCase(
        init_args={"pretrained_teacher": False, "imagenet_dir": None},
        max_epochs=1,
        image_size=256,
    ),
    # DRA: four small heads on ResNet-18 (random weights offline), K = 2 labelled anomalies.
    "DRA": HarnessCase(
        init_args={"backbone": "resnet18", "pre_trained": False},
        max_epochs=1,
        image_size=64,
        datamodule_factory=_dra_datamodule,
    ),
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
