"""mIoU metric (HADNet eqs. 14-15) on hand-made masks."""

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import Evaluator

from anomalib_hyperbolic.metrics import MIoU, _MIoU


def _batch(pred: list, gt: list) -> ImageBatch:
    pred_t = torch.tensor(pred, dtype=torch.bool)
    gt_t = torch.tensor(gt, dtype=torch.bool)
    return ImageBatch(image=torch.rand(pred_t.shape[0], 3, *pred_t.shape[1:]), pred_mask=pred_t, gt_mask=gt_t)


def test_miou_hand_made_masks():
    # pred covers 2 pixels, truth 1 of them; 4x1 image -> defect IoU 1/2, normal IoU 2/3
    batch = _batch([[[1, 1], [0, 0]]], [[[1, 0], [0, 0]]])
    metric = MIoU()
    metric.update(batch)
    assert metric.compute().item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    defect_only = MIoU(include_background=False)
    defect_only.update(batch)
    assert defect_only.compute().item() == pytest.approx(0.5)


def test_miou_is_dataset_level_not_mean_of_images():
    metric = MIoU(include_background=False)
    metric.update(_batch([[[1, 1], [1, 1]]], [[[1, 1], [1, 1]]]))  # 4/4
    metric.update(_batch([[[1, 0], [0, 0]]], [[[0, 1], [0, 0]]]))  # 0/2
    # accumulated: intersection 4, union 6 (a per-image mean would give 0.5)
    assert metric.compute().item() == pytest.approx(4 / 6)


def test_miou_perfect_and_disjoint():
    perfect = MIoU()
    perfect.update(_batch([[[0, 1], [1, 0]]], [[[0, 1], [1, 0]]]))
    assert perfect.compute().item() == pytest.approx(1.0)
    disjoint = MIoU()
    disjoint.update(_batch([[[0, 1], [1, 0]]], [[[1, 0], [0, 1]]]))
    assert disjoint.compute().item() == pytest.approx(0.0)


def test_miou_absent_class_and_float_threshold():
    metric = MIoU(include_background=False)
    metric.update(_batch([[[0, 0], [0, 0]]], [[[0, 0], [0, 0]]]))
    assert metric.compute().item() == pytest.approx(1.0)  # empty union -> absent_score
    scores = MIoU(threshold=0.5, fields=["anomaly_map", "gt_mask"])
    batch = ImageBatch(
        image=torch.rand(1, 3, 2, 2),
        anomaly_map=torch.tensor([[[0.9, 0.2], [0.6, 0.1]]]),
        gt_mask=torch.tensor([[[1, 0], [1, 0]]], dtype=torch.bool),
    )
    scores.update(batch)
    assert scores.compute().item() == pytest.approx(1.0)


def test_miou_errors_and_evaluator():
    metric = _MIoU()
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(torch.zeros(4, dtype=torch.bool), torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="binary"):
        metric.update(torch.zeros(4, dtype=torch.bool), torch.tensor([0, 1, 2, 0]))
    evaluator = Evaluator(test_metrics=[MIoU(prefix="pixel_")])
    assert evaluator.test_metrics[0].name == "pixel_MIoU"
