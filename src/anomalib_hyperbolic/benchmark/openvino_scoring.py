"""Score a test set with exported models through the OpenVINO runtime alone: metrics, latency, overlays."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from anomalib_hyperbolic.benchmark.cell_model import evaluator
from anomalib_hyperbolic.benchmark.progress import Progress
from anomalib_hyperbolic.openvino_runtime import CallTimer, compile_model, named_outputs

#: the evaluator's metrics left out: not in the main job's table, and slow to update
SKIPPED_METRICS = ("pixel_MIoU", "pixel_CategoryIoU")


def score_openvino(
    models: dict[str, Path],
    test_data: Any,
    progress: Progress,
    overlay_root: Path,
    precision: str = "f32",
    threads: int = 2,
    overlays: int = 4,
    warmup: int = 3,
) -> dict[str, dict[str, Any]]:
    """Score ``test_data`` with the OpenVINO runtime alone, every model on each image in turn.

    Metrics are the benchmark's (:func:`~anomalib_hyperbolic.benchmark.cell_model.evaluator`, less
    the IoUs) on the OpenVINO outputs; the time of each ``infer`` call (batch 1, after ``warmup``
    untimed calls) gives the median ms/image; anomalib's ``ImageVisualizer`` writes the first
    ``overlays`` images of each test class per model under ``overlay_root/<model>/<class>/``.

    Args:
        models: Model name -> exported ``.xml``.
        test_data: An anomalib dataset whose items are already at the models' input size.
        progress: Where progress lines go (its current stage is the scoring stage).
        overlay_root: Folder of the overlay images.
        precision: OpenVINO ``INFERENCE_PRECISION_HINT``.
        threads: OpenVINO's ``INFERENCE_NUM_THREADS``.
        overlays: Overlay images per model and test class.
        warmup: Untimed calls per model before the first timed one.
    """
    import numpy as np
    import torch
    from anomalib.data import ImageBatch
    from anomalib.visualization import ImageVisualizer

    compiled = {
        name: compile_model(xml, precision, INFERENCE_NUM_THREADS=threads, PERFORMANCE_HINT="LATENCY")
        for name, xml in models.items()
    }
    requests = {name: model.create_infer_request() for name, model in compiled.items()}
    outputs = {name: [port.get_any_name() for port in model.outputs] for name, model in compiled.items()}
    metrics = {
        name: [metric for metric in evaluator(with_masks=True).test_metrics if metric.name not in SKIPPED_METRICS]
        for name in models
    }
    timers = {name: CallTimer() for name in models}
    visualizer = ImageVisualizer()
    labels = test_data.samples["label"].astype(str).tolist()
    shown: Counter[str] = Counter()
    total = len(test_data)
    for index in range(total):
        item = test_data[index]
        array = item.image.numpy()[None].astype(np.float32)
        size = item.image.shape[-2:]
        overlay = shown[labels[index]] < overlays
        shown[labels[index]] += int(overlay)
        for name, request in requests.items():
            if index == 0:
                for _ in range(warmup):
                    request.infer([array])
            results = named_outputs(timers[name](request.infer, [array]))
            out = {key: torch.from_numpy(results[key]) for key in outputs[name]}
            batch = ImageBatch(
                image=item.image[None],
                gt_label=torch.as_tensor([item.gt_label]).bool(),
                gt_mask=item.gt_mask.reshape(1, *size).bool(),
                anomaly_map=out["anomaly_map"].reshape(1, *size),
                pred_score=out["pred_score"].reshape(1),
                pred_label=out["pred_label"].reshape(1).bool(),
                pred_mask=out["pred_mask"].reshape(1, *size).bool() if "pred_mask" in out else None,
                image_path=[item.image_path],
            )
            for metric in metrics[name]:
                metric.update(batch)
            if overlay:
                target = overlay_root / name.lower() / labels[index] / f"{Path(item.image_path).stem}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                image = visualizer.visualize(batch)
                if image is not None:
                    image.save(target, compress_level=1)  # fast PNG: the overlays are for looking at
        progress.update(0.95 * (index + 1) / total, f"{index + 1}/{total} test images")
    progress.update(0.95, "computing metrics", force=True)
    return {
        name: {
            "metrics": {metric.name: float(metric.compute()) for metric in metrics[name]},
            "openvino_ms_per_image": 1000 * timers[name].median_seconds,
            "openvino_precision": precision,
            "test_images": total,
            "overlays": sum(shown.values()),
            "overlay_dir": str(overlay_root / name.lower()),
        }
        for name in models
    }
