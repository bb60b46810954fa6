"""A segmentation cell's row (issue 32): IoU at three thresholds, training diagnostics, `evaluate_on: validation`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anomalib_hyperbolic import benchmark

TINY_HADNET = {
    "backbone": "resnet18",
    "layers": ["layer1", "layer2"],
    "pre_trained": False,
    "num_selected": [8, 8],
    "num_residuals": 8,
    "discriminator_widths": [8, 4],
    "score_pool_size": 4,
    "training_mode": "supervised",
    "init_batches": 1,
    "hst_steps": 1,
}


def test_evaluation_split_defaults_to_test_and_names_a_bad_value() -> None:
    assert benchmark.evaluation_split({}, {}) == "test"
    assert benchmark.evaluation_split({"evaluate_on": "validation"}, {}) == "validation"
    assert benchmark.evaluation_split({"evaluate_on": "validation"}, {"evaluate_on": "test"}) == "test"
    with pytest.raises(ValueError, match="evaluate_on must be one of"):
        benchmark.evaluation_split({}, {"name": "x", "evaluate_on": "val"})


def test_segmentation_cells_report_thresholds_and_diagnostics_and_score_the_validation_split(tmp_path: Path) -> None:
    from anomalib_hyperbolic.data import MagneticTile
    from anomalib_hyperbolic.testing import make_magnetic_tile_like

    root = make_magnetic_tile_like(tmp_path / "mt", n_normal=10, n_per_defect=10)
    # validation and test of different sizes, so that the count tells which split was scored
    data = {
        "root": str(root),
        "split_mode": "ratio",
        "split_ratios": [0.7, 0.1, 0.2],
        "split_seed": 0,
        "train_batch_size": 4,
        "eval_batch_size": 4,
        "num_workers": 0,
        "seed": 0,
    }
    hadnet = {"class_path": "anomalib_hyperbolic.models.HADNet", "init_args": TINY_HADNET, "max_epochs": 1}
    config = {
        "output": str(tmp_path / "out"),
        "seed": 0,
        "image_size": 32,
        "latency": False,
        "data": {"class_path": "anomalib_hyperbolic.data.MagneticTile", "init_args": data},
        "models": [
            {"name": "HADNet test", **hadnet},
            {"name": "HADNet validation", **hadnet, "evaluate_on": "validation"},
            {"name": "HADNet not probabilities", **hadnet, "probability_maps": False},
        ],
    }
    config_path = tmp_path / "bench.yaml"
    config_path.write_text(yaml.safe_dump(config))
    loaded = benchmark.load_config(config_path)
    rows = [
        benchmark.run_cell(loaded, spec, tmp_path / "runs" / str(index)) for index, spec in enumerate(loaded["models"])
    ]
    tested, validated, not_probabilities = rows

    datamodule = MagneticTile(**data)
    datamodule.setup()
    sizes = {"test": len(datamodule.test_data), "validation": len(datamodule.val_data)}
    assert sizes["test"] != sizes["validation"]
    assert (tested["evaluated_on"], tested["evaluated_images"]) == ("test", sizes["test"])
    assert (validated["evaluated_on"], validated["evaluated_images"]) == ("validation", sizes["validation"])

    for row in rows:
        for key in ("pixel_CategoryIoU_val_threshold", "pixel_CategoryIoU_oracle", "pixel_threshold_oracle"):
            assert key in row, (row["name"], key)
        # the raw maps at the validation threshold give the post-processor's figure; the oracle is at least as good
        assert row["pixel_CategoryIoU_val_threshold"] == pytest.approx(row["pixel_CategoryIoU"], abs=1e-6)
        assert row["pixel_CategoryIoU_oracle"] >= row["pixel_CategoryIoU_val_threshold"]
        # the last epoch's training figures
        assert 0 <= row["train_iou_at_0.5"] <= 1
        assert row["train_seg_loss"] > 0
        for group in ("defect", "background", "normal"):
            assert row[f"train_pixels_{group}"] > 0
            assert f"train_logit_{group}_q50" in row
    assert tested["pixel_CategoryIoU_oracle"] >= tested["pixel_CategoryIoU_at_0.5"]
    assert "pixel_CategoryIoU_at_0.5" not in not_probabilities  # probability_maps: false
    # the same seeded training; only the scored split differs
    assert validated["train_logit_defect_mean"] == tested["train_logit_defect_mean"]

    output = tmp_path / "out"
    output.mkdir()
    benchmark.write_tables(rows, output)
    header = (output / "results.md").read_text().splitlines()[0]
    assert "pixel_CategoryIoU_oracle" in header
    assert "train_iou_at_0.5" in header
    summary = benchmark.seed_summary(rows)
    # a configuration scored on validation is never pooled with its test-scored twin
    assert len(summary) == 2
    assert "pixel_CategoryIoU_oracle_mean" in summary[0]
