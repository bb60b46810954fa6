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
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

__all__ = ["TrainOnlyMixedPrecision", "autocast_device"]


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
