"""mIoU metric (HADNet eqs. 14-15) on hand-made masks."""

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import Evaluator

from anomalib_hyperbolic.metrics import CategoryIoU, MIoU, _CategoryIoU, _MIoU


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


def test_category_iou_averages_defect_types_not_pixels() -> None:
    """A small type counts as much as a large one, unlike the pooled binary IoU."""
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :3, :] = True  # large crack: 12 pixels, all found
    masks[1, 0, 0] = True  # small blowhole: 1 pixel, missed
    predicted = masks.clone()
    predicted[1, 0, 0] = False
    predicted[2, 3, 3] = True  # a false positive on a normal image
    paths = ["MT_Crack/Imgs/a.jpg", "MT_Blowhole/Imgs/b.jpg", "MT_Free/Imgs/c.jpg"]
    batch = ImageBatch(image=torch.rand(3, 3, 4, 4), pred_mask=predicted, gt_mask=masks, image_path=paths)
    metric = CategoryIoU(prefix="pixel_")
    metric.update(batch)
    per_category = metric.per_category()
    assert set(per_category) == {"crack", "blowhole", "background"}  # the normal image has no type
    assert per_category["crack"] == pytest.approx(1.0)
    assert per_category["blowhole"] == pytest.approx(0.0)
    assert per_category["background"] == pytest.approx(34 / 36)  # 34 true negatives; union adds FN and FP
    assert metric.compute().item() == pytest.approx(0.5)
    with_background = CategoryIoU(include_background=True)
    with_background.update(batch)
    assert with_background.compute().item() == pytest.approx((1.0 + 0.0 + 34 / 36) / 3)
    pooled = MIoU(include_background=False)
    pooled.update(batch)
    assert pooled.compute().item() == pytest.approx(12 / 14)  # one class: the large type dominates
    assert metric.name == "pixel_CategoryIoU"


def test_category_iou_names_bad_input() -> None:
    metric = _CategoryIoU()
    masks = torch.ones(2, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="1 image paths for a batch of 2"):
        metric.update(masks, masks, ["MT_Crack/Imgs/a.jpg"])
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(masks, torch.ones(2, 3, 3, dtype=torch.bool), ["a/x.jpg", "a/y.jpg"])
    metric.update(masks & False, masks & False, ["MT_Free/Imgs/a.jpg", "MT_Free/Imgs/b.jpg"])
    with pytest.raises(ValueError, match="no test image has a defect pixel"):
        metric.compute()


def test_category_iou_takes_batches_of_one_image() -> None:
    """A last batch of one image (torchmetrics' stat scores squeeze it) updates like any other."""
    import torch

    masks = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    masks[:, :, 2:5, 2:5] = True
    paths = [f"/data/MT_Crack/Imgs/{index}.jpg" for index in range(3)]
    together, split = _CategoryIoU(), _CategoryIoU()
    together.update(masks.float(), masks.float(), paths)
    split.update(masks[:2].float(), masks[:2].float(), paths[:2])
    split.update(masks[2:].float(), masks[2:].float(), paths[2:])
    assert together.compute() == split.compute()
