"""CPU latency and throughput of a cell's model in PyTorch eager and OpenVINO; OpenVINO's precision effect.

Every figure is a median of at least 20 timed calls after a warm-up
(:func:`anomalib_hyperbolic.openvino_runtime.median_seconds`), in the process that trained the cell
(or, with ``--time-only``, that rebuilt it).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from anomalib_hyperbolic.benchmark.config import cell_image_size
from anomalib_hyperbolic.openvino_runtime import compile_model, infer, median_seconds

logger = logging.getLogger(__name__)


def _latency_figures(model: Any, export_dir: Path, image_size: int, settings: dict[str, Any]) -> dict[str, float]:
    """Batch-1 latency and batch-N throughput of ``model`` in PyTorch eager and of its OpenVINO export."""
    import numpy as np
    import torch

    runs = max(int(settings.get("runs", 20)), 20)
    warmup = int(settings.get("warmup", 5))
    batch_sizes = settings.get("batch_sizes", [1, 8])
    precision = settings.get("openvino_precision", "f32")
    figures: dict[str, float] = {}
    model.eval()
    xml = model.to_openvino(export_root=export_dir, input_size=(image_size, image_size))
    for batch in batch_sizes:
        inputs = torch.rand(batch, 3, image_size, image_size)
        with torch.no_grad():
            seconds = median_seconds(lambda inputs=inputs: model(inputs), runs, warmup)
        _store(figures, "torch", batch, seconds)
        request, graph_batch, note = batch_infer_request(xml, batch, image_size, precision)
        calls = math.ceil(batch / graph_batch)
        if note:
            figures[f"openvino_b{batch}_note"] = note
        array = np.random.default_rng(0).random((graph_batch, 3, image_size, image_size), dtype=np.float32)

        def infer_batch(request: Any = request, array: np.ndarray = array, calls: int = calls) -> None:
            for _ in range(calls):
                request.infer([array])

        _store(figures, "openvino", batch, median_seconds(infer_batch, runs, warmup))
    return figures


def batch_infer_request(xml: Any, batch: int, image_size: int, precision: str | None) -> tuple[Any, int, str]:
    """An infer request for ``batch`` images, or for the graph's own fixed batch when it cannot be reshaped.

    ``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT`` (``"f32"``...); ``None`` or ``"default"``
    leaves the device's default (bf16 on CPUs with bf16 units; see
    :func:`~anomalib_hyperbolic.openvino_runtime.compile_model`). Some exports carry a fixed batch
    inside the graph (anomalib's Patchcore with EfficientNet-Lite0 at 256 px comes out of torch's
    exporter with a static batch of 2): then the timing uses calls of the graph's own batch, and the
    returned note says so.
    """
    import openvino as ov

    ov_model = ov.Core().read_model(xml)
    try:
        ov_model.reshape({ov_model.input(0).any_name: [batch, 3, image_size, image_size]})
        return compile_model(ov_model, precision).create_infer_request(), batch, ""
    except RuntimeError as error:
        ov_model = ov.Core().read_model(xml)
        graph_batch = int(ov_model.input(0).get_partial_shape()[0].get_length())
        logger.warning(
            "OpenVINO graph does not reshape to batch %d (%s); timing batch-%d calls", batch, error, graph_batch
        )
        calls = math.ceil(batch / graph_batch)
        note = f"graph has a fixed batch of {graph_batch}: timed as {calls} batch-{graph_batch} call(s)"
        return compile_model(ov_model, precision).create_infer_request(), graph_batch, note


def _store(figures: dict[str, float], runtime: str, batch: int, seconds: float) -> None:
    if batch == 1:
        figures[f"{runtime}_latency_ms_b1"] = seconds * 1000
    else:
        figures[f"{runtime}_throughput_ips_b{batch}"] = batch / seconds


PRECISIONS = ("f32", "default")  # OpenVINO's INFERENCE_PRECISION_HINT f32, and the device's own default


def precision_effect(
    config: dict[str, Any], spec: dict[str, Any], model: Any, datamodule: Any, export_dir: Path
) -> dict[str, Any]:
    """Test metrics and batch-1 latency of the exported OpenVINO graph at f32 and at the default precision.

    The test images go through the exported graph (anomalib's pre-processing, model and
    post-processing) alone, resized to the cell's input size (masks with nearest neighbours), once
    per precision; anomalib's AUROC and AUPRO are computed on its normalised outputs. Keys:
    ``ov_<precision>_image_AUROC`` (and ``pixel_AUROC``, ``pixel_AUPRO`` with masks),
    ``ov_<precision>_latency_ms_b1``, and ``ov_max_score_change`` (largest |score difference| between
    the precisions over the test images). A failure is recorded in the row, not raised.
    """
    try:
        return _precision_effect(config, spec, model, datamodule, export_dir)
    except Exception as error:
        logger.exception("precision-effect measurement failed")
        return {"precision_effect_error": f"{type(error).__name__}: {error}"[:500]}


def _precision_effect(
    config: dict[str, Any], spec: dict[str, Any], model: Any, datamodule: Any, export_dir: Path
) -> dict[str, Any]:
    import numpy as np
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    from anomalib_hyperbolic.metrics import MetricFields, threshold_free_metrics

    image_size = cell_image_size(config, spec)
    with_masks = bool(config.get("pixel_metrics", True))
    model.eval()
    xml = model.to_openvino(export_root=export_dir, input_size=(image_size, image_size))
    figures: dict[str, Any] = {}
    scores: dict[str, list[float]] = {}
    settings = config.get("latency") or {}
    for precision in PRECISIONS:
        request, graph_batch, _ = batch_infer_request(xml, 1, image_size, precision)
        metrics = threshold_free_metrics(pixel_metrics=with_masks)
        scores[precision] = []
        for batch in datamodule.test_dataloader():
            images = resize(batch.image, [image_size, image_size], antialias=True)
            for index in range(images.shape[0]):
                array = np.repeat(images[index : index + 1].numpy(), graph_batch, axis=0)
                outputs = infer(request, array)
                score = torch.from_numpy(outputs["pred_score"]).reshape(-1)[:1].float()
                fields: dict[str, torch.Tensor] = {"pred_score": score, "gt_label": batch.gt_label[index : index + 1]}
                if with_masks and batch.gt_mask is not None and "anomaly_map" in outputs:
                    anomaly_map = torch.from_numpy(outputs["anomaly_map"])[:1].float()
                    mask = resize(
                        batch.gt_mask[index : index + 1].unsqueeze(1).float(),
                        [image_size, image_size],
                        interpolation=InterpolationMode.NEAREST,
                    )
                    fields["anomaly_map"] = anomaly_map.reshape(1, image_size, image_size)
                    fields["gt_mask"] = mask.reshape(1, image_size, image_size).bool()
                for metric in metrics:
                    metric.update(MetricFields(**fields))
                scores[precision].append(float(score[0]))
        for metric in metrics:
            if metric.update_called:
                figures[f"ov_{precision}_{metric.name}"] = float(metric.compute())
        array = np.random.default_rng(0).random((graph_batch, 3, image_size, image_size), dtype=np.float32)
        seconds = median_seconds(
            lambda request=request, array=array: request.infer([array]),
            max(int(settings.get("runs", 20)), 20),
            int(settings.get("warmup", 5)),
        )
        figures[f"ov_{precision}_latency_ms_b1"] = seconds * 1000
    figures["ov_max_score_change"] = float(np.max(np.abs(np.subtract(*[scores[p] for p in PRECISIONS]))))
    return figures


def time_model(
    config: dict[str, Any], model: Any, export_dir: Path | None = None, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """CPU latency figures of a trained model (a failure is recorded in the row, not raised)."""
    import tempfile

    import torch

    torch.set_num_threads(int(os.environ.get("BENCHMARK_THREADS", torch.get_num_threads())))
    latency_size = int(config.get("latency_image_size", config.get("image_size", 256)))
    settings = settings if settings is not None else (config.get("latency") or {})
    try:
        with tempfile.TemporaryDirectory() as scratch:
            return _latency_figures(model, export_dir or Path(scratch), latency_size, settings)
    except Exception as error:  # keep the trained cell's metrics; say why timing failed
        logger.exception("latency measurement failed")
        return {"latency_error": f"{type(error).__name__}: {error}"[:500]}


def machine() -> str:
    """CPU model and core count of this machine, e.g. ``AMD EPYC 9B14, 2 cpus``."""
    import platform

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cpus"
