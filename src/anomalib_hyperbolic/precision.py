"""Mixed-precision training with full-precision evaluation, as a Lightning precision plugin.

Lightning's ``precision="bf16-mixed"`` autocasts every step: training, and also validation, test and
prediction, so anomaly maps, scores and the thresholds/normalisation anomalib derives from validation
are computed (and rounded) in bfloat16. :class:`TrainOnlyMixedPrecision` autocasts the training steps
only; validation, test and prediction steps run in float32 (the weights stay float32 under mixed
precision, so nothing else changes).

Example::

    from anomalib.engine import Engine
    from anomalib_hyperbolic.precision import TrainOnlyMixedPrecision

    engine = Engine(accelerator="cpu", plugins=[TrainOnlyMixedPrecision("bf16-mixed", device="cpu")])

The benchmark uses it for a cell with ``precision: bf16-mixed`` (and ``f32_evaluation: true``, the
default); see :mod:`anomalib_hyperbolic.benchmark`.

:class:`ChannelsLastTraining` is a callback that trains any model's convolutions in the channels-last
memory format: on a CPU with bf16 matrix units (AMX, avx512_bf16), bf16 autocast convolutions run
several times faster in it than in the default NCHW layout (``docs/results/mt_pdn_cpu``)::

    anomalib train --model HypAD --trainer.precision bf16-mixed \
        --trainer.callbacks+=anomalib_hyperbolic.precision.ChannelsLastTraining
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision

__all__ = ["ChannelsLastTraining", "TrainOnlyMixedPrecision", "autocast_device"]


def autocast_device(accelerator: str | None) -> str:
    """The ``torch.autocast`` device type of a Lightning ``accelerator`` flag (``cpu``, ``gpu``, ``auto``...).

    ``gpu``/``cuda`` give ``cuda``, ``mps`` gives ``mps``, ``auto`` (or ``None``) gives ``cuda`` when a
    CUDA device is available, else ``cpu``; anything else ``cpu``.
    """
    name = str(accelerator or "auto").lower()
    if name in {"gpu", "cuda"}:
        return "cuda"
    if name == "mps":
        return "mps"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


class TrainOnlyMixedPrecision(MixedPrecision):
    """Lightning's :class:`~lightning.pytorch.plugins.precision.MixedPrecision` for training steps only.

    Training steps run under ``torch.autocast(device, dtype)`` exactly as with Lightning's
    ``precision="bf16-mixed"`` (or ``"16-mixed"``, with its gradient scaler); validation, test and
    predict steps run with autocast disabled, in float32.

    Args:
        precision: ``"bf16-mixed"`` or ``"16-mixed"``.
        device: The ``torch.autocast`` device type, e.g. ``"cpu"`` or ``"cuda"`` (see :func:`autocast_device`).
        scaler: Optional gradient scaler (``16-mixed`` only; one is made when ``None``).
    """

    @contextmanager
    def _full_precision(self) -> Generator[None, None, None]:
        with torch.autocast(self.device, enabled=False):
            yield

    @contextmanager
    def val_step_context(self) -> Generator[None, None, None]:
        """Validation steps: float32 (autocast disabled)."""
        with self._full_precision():
            yield

    @contextmanager
    def test_step_context(self) -> Generator[None, None, None]:
        """Test steps: float32 (autocast disabled)."""
        with self._full_precision():
            yield

    @contextmanager
    def predict_step_context(self) -> Generator[None, None, None]:
        """Predict steps: float32 (autocast disabled)."""
        with self._full_precision():
            yield


class ChannelsLastTraining(Callback):
    """Train in the channels-last memory format; hand back a contiguous (NCHW) model after ``fit``.

    Every 4-D parameter and buffer is re-laid out in place (same values, same ``Parameter`` objects, so
    the optimiser is unaffected); convolutions then produce channels-last activations from NCHW input.
    After training the model returns to the default layout, so testing and export see the model as
    they would without this callback (checkpoints written during ``fit`` hold the same values with
    channels-last strides; loading copies values). Numerics: the same operations in another memory
    order (float32 results agree to rounding).
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Re-lay out the model in channels-last before the first step."""
        del trainer
        pl_module.to(memory_format=torch.channels_last)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Back to the default contiguous layout."""
        del trainer
        pl_module.to(memory_format=torch.contiguous_format)
