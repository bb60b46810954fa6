"""Training logit diagnostics and the per-type IoU at the validation, oracle and 0.5 thresholds (issue 32)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.post_processing import PostProcessor

from anomalib_hyperbolic.metrics import (
    CategoryIoU,
    CategoryIoUThresholds,
    LogitDiagnostics,
    category_iou_curve,
    raw_pixel_threshold,
)


# ---------------------------------------------------------------------------------------------- LogitDiagnostics
def _hand_built() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 2 x 4 images: image 0 has a 3-pixel defect, image 1 is normal; every logit chosen by hand."""
    logits = torch.tensor(
        [
            [[4.0, 2.0, -1.0, -5.0], [-2.0, -3.0, 1.0, -4.0]],  # defect: 4, 2, -1; background: the other 5
            [[0.5, -0.5, -1.5, 3.0], [-2.5, -3.5, 0.25, -6.0]],  # normal image: all 8
        ]
    ).unsqueeze(1)
    masks = torch.zeros(2, 1, 2, 4)
    masks[0, 0, 0, :3] = 1.0
    return logits, masks


def test_pixel_groups_split_defect_background_and_normal_images() -> None:
    _, masks = _hand_built()
    groups = LogitDiagnostics.pixel_groups(masks)
    expected = torch.tensor([[[0, 0, 0, 1], [1, 1, 1, 1]], [[2, 2, 2, 2], [2, 2, 2, 2]]]).unsqueeze(1)
    assert torch.equal(groups, expected)


def test_logit_diagnostics_on_a_hand_built_map() -> None:
    logits, masks = _hand_built()
    diagnostics = LogitDiagnostics()
    diagnostics.update(logits, masks)
    result = diagnostics.compute()
    assert result["pixels_defect"] == 3
    assert result["pixels_background"] == 5
    assert result["pixels_normal"] == 8
    assert result["logit_defect_mean"] == pytest.approx((4 + 2 - 1) / 3)
    assert result["logit_background_mean"] == pytest.approx((-5 - 2 - 3 + 1 - 4) / 5)
    assert result["logit_normal_mean"] == pytest.approx((0.5 - 0.5 - 1.5 + 3 - 2.5 - 3.5 + 0.25 - 6) / 8)
    assert result["logit_defect_above_0"] == pytest.approx(2 / 3)
    assert result["logit_background_above_0"] == pytest.approx(1 / 5)
    assert result["logit_normal_above_0"] == pytest.approx(3 / 8)
    # logit > 0 against the masks: TP 2 (4, 2), FN 1 (-1), FP 1 (background 1) + 3 (normal 0.5, 3, 0.25)
    assert result["iou_at_0.5"] == pytest.approx(2 / (2 + 1 + 4))
    width = 40 / 4000  # the default histogram's bin width
    # medians: defect {-1, 2, 4} -> 2; background {-5, -4, -3, -2, 1} -> -3; to a bin's width
    assert result["logit_defect_q50"] == pytest.approx(2.0, abs=width)
    assert result["logit_background_q50"] == pytest.approx(-3.0, abs=width)
    assert result["logit_normal_q05"] == pytest.approx(-6.0, abs=width)
    assert result["logit_normal_q95"] == pytest.approx(3.0, abs=width)


def test_logit_diagnostics_accumulate_the_epoch_and_reset() -> None:
    logits, masks = _hand_built()
    together, split = LogitDiagnostics(), LogitDiagnostics()
    together.update(logits, masks)
    split.update(logits[:1], masks[:1])
    split.update(logits[1:], masks[1:])
    assert together.compute() == split.compute()
    split.reset()
    split.update(logits[1:], masks[1:])  # a normal image only: no defect group, IoU from the false positives
    result = split.compute()
    assert "pixels_defect" not in result
    assert "pixels_background" not in result
    assert result["iou_at_0.5"] == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        LogitDiagnostics().update(logits, masks[:, :, :1])


def test_logit_diagnostics_clamp_outside_the_histogram_range() -> None:
    diagnostics = LogitDiagnostics(low=-1.0, high=1.0, bins=20)
    diagnostics.update(torch.tensor([[[[50.0, -50.0]]]]), torch.tensor([[[[1.0, 0.0]]]]))
    result = diagnostics.compute()
    assert result["logit_defect_mean"] == 50.0  # the mean is exact
    assert -1.0 <= result["logit_background_q05"] <= result["logit_defect_q95"] <= 1.0  # quantiles clamp


# ---------------------------------------------------------------------------------------------- thresholds
PATHS = [
    "MT_Crack/Imgs/a.jpg",
    "MT_Crack/Imgs/b.jpg",
    "MT_Blowhole/Imgs/c.jpg",
    "MT_Uneven/Imgs/d.jpg",
    "MT_Free/Imgs/e.jpg",
    "MT_Free/Imgs/f.jpg",
]


def _maps_and_masks(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Six 16 x 16 probability maps: defects (all but the normals) score higher, with noise."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(len(PATHS), 1, 16, 16)
    masks[0, :, 2:6, 2:6] = 1
    masks[1, :, 8:10, 3:12] = 1
    masks[2, :, 5, 5] = 1
    masks[3, :, 4:14, 4:14] = 1
    maps = 0.3 * torch.rand(masks.shape, generator=generator) + 0.35 * masks
    maps[4, :, :3, :3] += 0.4  # a normal image lights up
    return maps, masks


def _category_iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> float:
    """:class:`CategoryIoU` of ``maps > threshold`` (the metric binarises the raw maps itself)."""
    metric = CategoryIoU(fields=["anomaly_map", "gt_mask", "image_path"], threshold=threshold)
    images = torch.rand(len(maps), 3, 16, 16)
    metric.update(ImageBatch(image=images, anomaly_map=maps, gt_mask=masks.squeeze(1).bool(), image_path=PATHS))
    return float(metric.compute())


def test_category_iou_curve_agrees_with_category_iou() -> None:
    maps, masks = _maps_and_masks()
    categories = ["crack", "crack", "blowhole", "uneven", None, None]
    thresholds = torch.tensor([0.0, 0.2, 0.35, 0.5, 0.61, 0.9, 2.0])
    curve = category_iou_curve(maps, masks, categories, thresholds)
    for threshold, value in zip(thresholds.tolist(), curve.tolist(), strict=True):
        assert value == pytest.approx(_category_iou(maps, masks, threshold), abs=1e-6), threshold
    with pytest.raises(ValueError, match="no image has a defect type"):
        category_iou_curve(maps, masks, [None] * len(maps), thresholds)


def _post_processor(threshold: float, low: float, high: float, sensitivity: float = 0.5) -> PostProcessor:
    """Anomalib's post-processor as validation leaves it: a pixel threshold and min / max."""
    post_processor = PostProcessor(pixel_sensitivity=sensitivity)
    post_processor._pixel_threshold.fill_(threshold)
    post_processor.pixel_min.fill_(low)
    post_processor.pixel_max.fill_(high)
    return post_processor


@pytest.mark.parametrize("sensitivity", [0.5, 0.3])
def test_raw_pixel_threshold_marks_what_the_post_processor_marks(sensitivity: float) -> None:
    maps, _ = _maps_and_masks()
    post_processor = _post_processor(0.55, 0.1, 0.9, sensitivity)
    batch = ImageBatch(
        image=torch.rand(len(maps), 3, 16, 16), anomaly_map=maps.clone(), pred_score=maps.amax((1, 2, 3))
    )
    post_processor.post_process_batch(batch)
    assert torch.equal(batch.pred_mask.flatten(), (maps > raw_pixel_threshold(post_processor)).flatten())
    assert raw_pixel_threshold(object()) is None
    assert raw_pixel_threshold(PostProcessor(enable_thresholding=False)) is None
    assert raw_pixel_threshold(PostProcessor()) == 0.5  # before validation: the map is compared as it is


def test_oracle_threshold_iou_is_at_least_the_validation_threshold_iou() -> None:
    """On the same maps: the oracle's IoU >= the validation threshold's (the post-processor's masks) and 0.5's."""
    maps, masks = _maps_and_masks()
    post_processor = _post_processor(0.62, 0.0, 1.0)  # a validation threshold a little too high
    callback = CategoryIoUThresholds(probability_threshold=0.5)
    module = SimpleNamespace(post_processor=post_processor)
    callback.on_test_epoch_start(None, module)
    for rows in (slice(0, 4), slice(4, 6)):  # two test batches
        batch = ImageBatch(
            image=torch.rand(len(maps[rows]), 3, 16, 16),
            anomaly_map=maps[rows].clone(),
            pred_score=maps[rows].amax((1, 2, 3)),
            gt_mask=masks[rows].squeeze(1).bool(),
            image_path=PATHS[rows],
        )
        callback.on_test_batch_end(None, module, batch, None, 0)  # raw maps, before the post-processor
        post_processor.post_process_batch(batch)  # what anomalib's evaluator then sees
    callback.on_test_epoch_end(None, module)
    results = callback.results

    assert results["pixel_threshold_val"] == pytest.approx(0.62)
    assert results["pixel_CategoryIoU_val_threshold"] == pytest.approx(_category_iou(maps, masks, 0.62))
    assert results["pixel_CategoryIoU_at_0.5"] == pytest.approx(_category_iou(maps, masks, 0.5))
    oracle = results["pixel_CategoryIoU_oracle"]
    assert oracle >= results["pixel_CategoryIoU_val_threshold"]
    assert oracle >= results["pixel_CategoryIoU_at_0.5"]
    assert oracle == pytest.approx(_category_iou(maps, masks, results["pixel_threshold_oracle"]))
    # no threshold on a fine grid does better than the searched one
    grid = max(_category_iou(maps, masks, threshold) for threshold in torch.linspace(0, 1, 201).tolist())
    assert oracle >= grid - 1e-6
    assert set(results["pixel_CategoryIoU_per_type"]) == {"val_threshold", "at_0.5", "oracle"}
    assert set(results["pixel_CategoryIoU_per_type"]["oracle"]) == {"crack", "blowhole", "uneven", "background"}


def test_thresholds_report_nothing_without_defect_images_and_no_fixed_threshold_unless_asked() -> None:
    maps, masks = _maps_and_masks()
    callback = CategoryIoUThresholds()
    module = SimpleNamespace(post_processor=None)
    callback.on_test_epoch_start(None, module)
    batch = ImageBatch(
        image=torch.rand(2, 3, 16, 16), anomaly_map=maps[4:], gt_mask=masks[4:].squeeze(1).bool(), image_path=PATHS[4:]
    )
    callback.on_test_batch_end(None, module, batch, None, 0)
    callback.on_test_epoch_end(None, module)
    assert callback.results == {}  # only normal images
    callback.on_test_epoch_start(None, module)
    batch = ImageBatch(
        image=torch.rand(6, 3, 16, 16), anomaly_map=maps, gt_mask=masks.squeeze(1).bool(), image_path=PATHS
    )
    callback.on_test_batch_end(None, module, batch, None, 0)
    callback.on_test_epoch_end(None, module)
    assert "pixel_CategoryIoU_oracle" in callback.results
    assert not any(key.startswith(("pixel_CategoryIoU_at_", "pixel_CategoryIoU_val")) for key in callback.results)


def test_order_statistics_stay_inside_maps_with_tens_of_millions_of_pixels() -> None:
    """490 test maps of 256 x 256 have 32 M pixels: float32 positions ran one past the end (an IndexError)."""
    from anomalib_hyperbolic.metrics import evenly_spaced_order_statistics

    values = torch.arange(21_823_488, dtype=torch.float64)  # the size that failed; each value is its index
    picked = evenly_spaced_order_statistics(values, 1000)
    assert len(picked) == 1000
    assert float(picked[0]) == 0
    assert float(picked[-1]) == len(values) - 1
    assert bool((picked.diff() > 0).all())
    torch.testing.assert_close(evenly_spaced_order_statistics(torch.tensor([3.0]), 5), torch.full((5,), 3.0))
