"""OpenVINO at run time: compile an exported model, read its outputs by name, time calls by their median.

The one place where this package compiles OpenVINO models and times them: the benchmark's latency
and precision-effect figures, the main job's scoring, :mod:`anomalib_hyperbolic.openvino_precision`
and ``examples/openvino_inference.py``. Imports OpenVINO and NumPy only (no torch), so an edge
script can use it.

``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``, ``"f16"``); ``None``
or ``"default"`` leaves the device's default (bf16 on CPUs with bf16 units).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: ``precision`` values that leave OpenVINO's ``INFERENCE_PRECISION_HINT`` unset (the device's default)
DEVICE_DEFAULT_PRECISIONS = (None, "default")


def compile_model(
    model: str | Path | Any, precision: str | None = "f32", device: str = "CPU", **properties: Any
) -> Any:
    """An ``openvino.CompiledModel`` of an IR/ONNX file or an ``openvino.Model``.

    Args:
        model: Path of an ``.xml`` (with its ``.bin``) or ``.onnx`` file, or a read ``openvino.Model``.
        precision: ``INFERENCE_PRECISION_HINT``; ``None`` or ``"default"``: the device's default.
        device: OpenVINO device name.
        properties: Further compile properties, e.g. ``INFERENCE_NUM_THREADS=2``.
    """
    import openvino as ov

    core = ov.Core()
    if isinstance(model, (str, Path)):
        model = core.read_model(model)
    config = dict(properties)
    if precision not in DEVICE_DEFAULT_PRECISIONS:
        config["INFERENCE_PRECISION_HINT"] = precision
    return core.compile_model(model, device, config)


def named_outputs(results: Mapping[Any, Any]) -> dict[str, np.ndarray]:
    """An inference's outputs (``request.infer(...)`` or ``compiled(...)``) as copies, under every name of each port."""
    return {name: np.array(value) for port, value in results.items() for name in port.get_names()}


def infer(request: Any, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run an ``openvino.InferRequest`` on one input; its outputs by name (see :func:`named_outputs`)."""
    return named_outputs(request.infer([inputs]))


class CallTimer:
    """Times calls with ``time.perf_counter`` and reports their median."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call ``function(*args)``, record how long it took, return its result."""
        start = time.perf_counter()
        result = function(*args)
        self.seconds.append(time.perf_counter() - start)
        return result

    @property
    def median_seconds(self) -> float:
        """Median of the recorded calls, in seconds."""
        return statistics.median(self.seconds)


def median_seconds(function: Callable[[], Any], runs: int, warmup: int) -> float:
    """Median seconds of ``runs`` calls of ``function`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    timer = CallTimer()
    for _ in range(runs):
        timer(function)
    return timer.median_seconds
