"""The benchmark command on synthetic data: tables, plots, resumability."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from anomalib_hyperbolic import benchmark
from anomalib_hyperbolic.testing import make_mvtec_like_dataset
from tests.harness_cases import HARNESS_CASES


def synthetic_data(root: Path, batch: int | None = None) -> dict[str, Any]:
    """The ``data`` entry of a benchmark config on a generated MVTec-like folder (``make_mvtec_like_dataset``)."""
    init_args: dict[str, Any] = {"root": str(root), "category": "synthetic", "num_workers": 0}
    if batch is not None:
        init_args["train_batch_size"] = batch
    return {"class_path": "anomalib.data.MVTecAD", "init_args": init_args}


def test_benchmark_grid_tables_plots_and_resume(tmp_path: Path) -> None:
    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=64)
    padim = {
        "class_path": "anomalib.models.Padim",
        "init_args": {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1", "layer2"]},
        "max_epochs": 1,
    }
    config = {
        "output": str(tmp_path / "out"),
        "seed": 0,
        "image_size": 64,
        "data": synthetic_data(root, batch=4),
        "latency": {"runs": 20, "warmup": 1, "batch_sizes": [1, 8]},
        "models": [{"name": "PaDiM-a", **padim}, {"name": "PaDiM-b", **padim}],
    }
    config_path = tmp_path / "bench.yaml"
    config_path.write_text(yaml.safe_dump(config))

    rows = benchmark.run_grid(config_path)
    assert [row["name"] for row in rows] == ["PaDiM-a", "PaDiM-b"]
    for row in rows:
        for key in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO", "pixel_MIoU", "train_seconds"):
            assert key in row, key
        assert row["peak_memory_mb"] > 0
        assert row["torch_latency_ms_b1"] > 0
        assert row["openvino_latency_ms_b1"] > 0
        assert row["torch_throughput_ips_b8"] > 0
        assert row["openvino_throughput_ips_b8"] > 0
        for key in benchmark.RAW_METRIC_COLUMNS:  # threshold-free metrics on the raw scores too
            assert 0 <= row[key] <= 1, key
    out = tmp_path / "out"
    with (out / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["name"] for row in table] == ["PaDiM-a", "PaDiM-b"]
    assert all(row[column] for row in table for column in benchmark.METRIC_COLUMNS), "empty metric cell in the table"
    assert "| PaDiM-a |" in (out / "results.md").read_text()
    assert (out / "metrics.png").stat().st_size > 0
    assert (out / "latency_vs_aupro.png").stat().st_size > 0

    # resume: a finished cell is kept, a removed one is recomputed
    kept = out / "cells" / "PaDiM-a.json"
    marker = json.loads(kept.read_text())
    marker["note"] = "kept"
    kept.write_text(json.dumps(marker))
    (out / "cells" / "PaDiM-b.json").unlink()
    rows = benchmark.run_grid(config_path)
    assert rows[0]["note"] == "kept"
    assert (out / "cells" / "PaDiM-b.json").is_file()


def test_benchmark_config_errors(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(FileNotFoundError):
        benchmark.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"output": "x", "data": {}, "models": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(ValueError, match="unique"):
        benchmark.load_config(bad)


def test_train_here_time_later_with_saved_weights(tmp_path: Path) -> None:
    """`latency: false` + `save_weights`: no timing during training; `--time-only` times the saved cells."""
    import torch
    from sklearn.metrics import roc_auc_score

    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=64)
    config = {
        "output": str(tmp_path / "out"),
        "seed": 0,
        "image_size": 64,
        "latency": False,
        "latency_after": {"runs": 20, "warmup": 1, "batch_sizes": [1]},
        "save_weights": True,
        "data": synthetic_data(root, batch=4),
        "models": [
            {
                "name": "PaDiM",
                "class_path": "anomalib.models.Padim",
                "init_args": {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1", "layer2"]},
                "max_epochs": 1,
            },
            {
                "name": "PaDiM unsaved",
                "class_path": "anomalib.models.Padim",
                "init_args": {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1", "layer2"]},
                "max_epochs": 1,
                "save_weights": False,
            },
        ],
    }
    config_path = tmp_path / "bench.yaml"
    config_path.write_text(yaml.safe_dump(config))

    rows = benchmark.run_grid(config_path, parallel=2)
    assert [row["name"] for row in rows] == ["PaDiM", "PaDiM unsaved"]
    for row in rows:
        assert "torch_latency_ms_b1" not in row
        assert row["steps_run"] >= 1
        assert row["epochs_run"] == 1
        assert "cpus" in row["machine"]  # the machine the cell trained on (times compare within one)
    weights = tmp_path / "out" / "weights" / "PaDiM.pt"
    saved = torch.load(weights, weights_only=True)
    # only what training changed: the fitted Gaussian (resized from empty) and the post-processor's statistics
    assert "model.gaussian.mean" in saved
    assert not any(key.startswith("model.feature_extractor") for key in saved)
    assert not (tmp_path / "out" / "weights" / "PaDiM unsaved.pt").exists()

    # the analysis scripts' entry: the rebuilt cell scores its test images as the cell did
    datamodule, model = benchmark.trained_cell_for_testing(config_path, "PaDiM")
    assert not model.training
    with torch.no_grad():
        batches = list(benchmark.transformed_test_batches(datamodule, model))
        scores = torch.cat([model.model(batch.image).pred_score.flatten() for batch in batches])
    labels = torch.cat([batch.gt_label.flatten() for batch in batches])
    assert batches[0].image.shape[-1] == 64
    assert len(labels) == len(datamodule.test_data)
    assert roc_auc_score(labels.numpy(), scores.numpy()) == pytest.approx(rows[0]["raw_image_AUROC"], abs=1e-4)
    with pytest.raises(FileNotFoundError, match="save_weights"):
        benchmark.trained_cell_for_testing(config_path, "PaDiM unsaved")
    with pytest.raises(ValueError, match="No cell 'PaDiM s1'"):
        benchmark.trained_cell_for_testing(config_path, "PaDiM s1")

    rows = benchmark.run_grid(config_path, time_only=True)
    timed, untimed = rows
    assert timed["torch_latency_ms_b1"] > 0
    assert timed["openvino_latency_ms_b1"] > 0
    assert timed["latency_machine"]
    assert timed["image_AUROC"] == rows[0]["image_AUROC"]  # the trained metrics are kept
    assert "torch_latency_ms_b1" not in untimed


def test_load_trained_state_resizes_buffers_and_names_unknown_keys() -> None:
    import pytest
    import torch

    class Bank(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.register_buffer("memory_bank", torch.empty(0))

    trained = Bank()
    initial = {key: value.clone() for key, value in trained.state_dict().items()}
    trained.memory_bank = torch.randn(5, 2)
    state = benchmark.trained_state(trained, initial)
    assert set(state) == {"memory_bank"}

    fresh = Bank()
    benchmark.load_trained_state(fresh, state)
    assert torch.equal(fresh.memory_bank, state["memory_bank"])
    with pytest.raises(ValueError, match="unknown keys"):
        benchmark.load_trained_state(Bank(), {"other.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"linear\.weight"):
        benchmark.load_trained_state(Bank(), {"linear.weight": torch.zeros(3, 3)})


def test_seeds_expand_into_cells_summarised_with_spread_and_smoke_size(tmp_path: Path) -> None:
    """`seeds` gives one cell per seed; `--smoke` applies the config's smoke size and generates its data."""
    config = {
        "output": str(tmp_path / "full"),
        "image_size": 256,
        "seeds": [0, 1],
        "latency": False,
        "data": synthetic_data(tmp_path / "generated"),
        "models": [
            {
                "name": "PaDiM",
                "class_path": "anomalib.models.Padim",
                "init_args": {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1", "layer2"]},
                "max_epochs": 3,
                "smoke": {"init_args": {"layers": ["layer1"], "n_features": 32}},
            }
        ],
        "smoke": {
            "output": str(tmp_path / "smoke"),
            "image_size": 64,
            "data": {"init_args": {"train_batch_size": 4}},
            "models": {"max_epochs": 1},
            "prepare": [
                {
                    "path": str(tmp_path / "generated"),
                    "function": "anomalib_hyperbolic.testing.make_mvtec_like_dataset",
                    "init_args": {"n_train": 4, "n_test_good": 2, "n_test_defect": 2, "image_size": 64},
                }
            ],
        },
    }
    config_path = tmp_path / "bench.yaml"
    config_path.write_text(yaml.safe_dump(config))
    full = benchmark.load_config(config_path)
    assert [spec["name"] for spec in full["models"]] == ["PaDiM s0", "PaDiM s1"]
    assert full["models"][1]["seed"] == 1
    assert full["models"][0]["init_args"]["layers"] == ["layer1", "layer2"]

    smoke = benchmark.load_config(config_path, smoke=True)
    assert smoke["image_size"] == 64
    assert smoke["data"]["init_args"]["root"] == str(tmp_path / "generated")  # merged, not replaced
    assert all(spec["max_epochs"] == 1 and spec["init_args"]["layers"] == ["layer1"] for spec in smoke["models"])

    assert benchmark.main(["--config", str(config_path), "--smoke"]) == 0
    assert (tmp_path / "generated" / "synthetic").is_dir()  # written by the smoke prepare step
    out = tmp_path / "smoke"
    summary = (out / "summary.md").read_text()
    assert "| PaDiM | 0, 1 |" in summary
    assert (out / "summary.csv").is_file()
    rows = benchmark.collect(out)
    assert sorted(row["name"] for row in rows) == ["PaDiM s0", "PaDiM s1"]
    assert all(row["group"] == "PaDiM" for row in rows)
    assert (out / "metrics.png").stat().st_size > 0


def test_precision_effect_scores_the_test_images_with_openvino_at_both_precisions(tmp_path: Path) -> None:
    """`--precision-effect`: OpenVINO f32 on the exported graph reproduces the Engine's test metrics."""
    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=3, n_test_defect=3, image_size=64)
    config = {
        "image_size": 64,
        "latency": False,
        "precision_effect": True,
        "data": synthetic_data(root, batch=4),
    }
    spec = {
        "name": "PaDiM",
        "class_path": "anomalib.models.Padim",
        "init_args": {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1"], "n_features": 32},
        "max_epochs": 1,
    }
    row = benchmark.run_cell(config, spec, tmp_path / "cell")
    assert "precision_effect_error" not in row, row.get("precision_effect_error")
    for precision in benchmark.PRECISIONS:
        for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
            assert 0 <= row[f"ov_{precision}_{key}"] <= 1
        assert row[f"ov_{precision}_latency_ms_b1"] > 0
    # same images, same graph as the Engine's post-processed outputs: f32 gives the same figures
    assert abs(row["ov_f32_image_AUROC"] - row["image_AUROC"]) < 1e-3
    assert abs(row["ov_f32_pixel_AUROC"] - row["pixel_AUROC"]) < 1e-3
    assert row["ov_max_score_change"] >= 0


def test_bf16_cell_validates_once_after_its_last_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-epoch ``precision: bf16-mixed`` cell: bf16 training, one float32 validation, at the end."""
    from anomalib_hyperbolic import metrics

    validated: list[int] = []

    class CountingTimer(metrics.TrainingStepTimer):  # run_cell's own callback, plus a validation count
        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                validated.append(trainer.current_epoch)

    monkeypatch.setattr(metrics, "TrainingStepTimer", CountingTimer)
    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=64)
    config = {
        "image_size": 64,
        "latency": False,
        "precision": "bf16-mixed",  # config default, f32_evaluation: true by default
        "data": synthetic_data(root, batch=4),
    }
    spec = {
        "name": "SimpleNet",
        "class_path": "anomalib_hyperbolic.models.SimpleNet",
        "init_args": HARNESS_CASES["SimpleNet"].init_args,
        "max_epochs": 2,
    }
    row = benchmark.run_cell(config, spec, tmp_path / "cell")
    assert validated == [1]  # once, after the second (last) epoch
    assert row["check_val_every_n_epoch"] == 2
    assert row["precision"] == "bf16-mixed"
    assert row["f32_evaluation"] is True
    assert row["epochs_run"] == 2
    for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
        assert math.isfinite(row[key]), key

    # a step-based cell keeps Lightning's every-epoch validation; an explicit interval is kept
    validated.clear()
    row = benchmark.run_cell({**config, "precision": None}, {**spec, "max_steps": 2}, tmp_path / "steps")
    assert row["check_val_every_n_epoch"] == 1
    assert row["precision"] == "32-true"
    assert "f32_evaluation" not in row
    assert validated == [0, 1]


def test_latency_only_cell_times_an_untrained_model_with_the_buffers_it_is_given(tmp_path: Path) -> None:
    """`latency_only`: PatchCore timed with the memory bank a larger training set would give, no training."""
    import pytest

    root = make_mvtec_like_dataset(tmp_path / "data", n_train=2, n_test_good=1, n_test_defect=1, image_size=64)
    config = {
        "image_size": 64,
        "latency": {"runs": 20, "warmup": 1, "batch_sizes": [1]},
        "data": synthetic_data(root),
    }
    spec = {
        "name": "Patchcore big bank",
        "class_path": "anomalib.models.Patchcore",
        "init_args": {"backbone": "resnet18", "pre_trained": False, "layers": ["layer2"]},
        "latency_only": {"buffers": {"model.memory_bank": [5000, 128]}},
    }
    model = benchmark.untrained_model(config, spec)
    assert tuple(model.model.memory_bank.shape) == (5000, 128)
    row = benchmark.run_cell(config, spec, tmp_path / "cell")
    assert row["torch_latency_ms_b1"] > 0
    assert row["openvino_latency_ms_b1"] > 0
    assert "image_AUROC" not in row
    wrong = {**spec, "latency_only": {"buffers": {"model.no_such_bank": [2, 2]}}}
    with pytest.raises(ValueError, match="not a registered buffer"):
        benchmark.untrained_model(config, wrong)


def test_ddp_cell_is_written_once_by_rank_zero_with_its_throughput(tmp_path: Path) -> None:
    """A cell with `devices: 2, strategy: ddp` trains under DDP; rank 0 alone writes its row."""
    root = make_mvtec_like_dataset(tmp_path / "data", n_train=8, n_test_good=2, n_test_defect=2, image_size=64)
    simplenet = {
        "class_path": "anomalib_hyperbolic.models.SimpleNet",
        "init_args": HARNESS_CASES["SimpleNet"].init_args,  # tiny, offline
        "max_epochs": 10,
        "max_steps": 3,
    }
    config = {
        "output": str(tmp_path / "out"),
        "image_size": 64,
        "latency": False,
        "data": synthetic_data(root, batch=2),
        "models": [{"name": "SimpleNet DDP", "devices": 2, "strategy": "ddp", **simplenet}],
    }
    config_path = tmp_path / "bench.yaml"
    config_path.write_text(yaml.safe_dump(config))

    rows = benchmark.run_grid(config_path)
    assert [row["name"] for row in rows] == ["SimpleNet DDP"]
    row = rows[0]
    assert row["world_size"] == 2
    assert row["steps_run"] == 3
    assert row["train_steps_per_second"] > 0
    assert row["train_images_per_second"] == row["train_steps_per_second"] * 2 * 2
    assert 0 <= row["image_AUROC"] <= 1
    assert not list((tmp_path / "out" / "cells").glob("*.tmp"))


def test_cell_whose_evaluation_failed_is_tested_again_without_refitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fit that ends before a failing test step is kept; rerunning the cell tests it without training."""
    from anomalib_hyperbolic import metrics

    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=64)
    spec = {
        "name": "PatchCore",  # its memory bank starts empty: the fitted state resizes a buffer
        "class_path": "anomalib.models.Patchcore",
        "init_args": {"backbone": "resnet18", "pre_trained": False, "layers": ["layer2"]},
        "max_epochs": 1,
    }
    config = {
        "output": str(tmp_path / "out"),
        "image_size": 64,
        "latency": False,
        "data": synthetic_data(root, batch=4),
        "models": [spec],
    }
    fits: list[int] = []

    class CountingTimer(metrics.TrainingStepTimer):
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            fits.append(1)
            super().on_fit_start(trainer, pl_module)

    class FailingOnce(metrics.RawScoreMetrics):
        failed = False

        def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not FailingOnce.failed:
                FailingOnce.failed = True
                raise RuntimeError("evaluation failed")
            super().on_test_epoch_end(trainer, pl_module)

    monkeypatch.setattr(metrics, "TrainingStepTimer", CountingTimer)
    monkeypatch.setattr(metrics, "RawScoreMetrics", FailingOnce)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        benchmark.run_and_write_cell(config, spec)
    fitted = tmp_path / "out" / "runs" / "PatchCore" / "fitted_state.pt"
    assert fits == [1]
    assert fitted.is_file()
    assert not benchmark.cell_file(tmp_path / "out", "PatchCore").exists()

    benchmark.run_and_write_cell(config, spec)  # tests the kept fit
    row = json.loads(benchmark.cell_file(tmp_path / "out", "PatchCore").read_text())
    assert fits == [1]
    assert row["resumed_from_fitted_state"] is True
    assert row["epochs_run"] == 1
    assert row["train_seconds"] > 0
    assert 0 <= row["image_AUROC"] <= 1
    assert 0 <= row["raw_pixel_AUROC"] <= 1
    assert not fitted.exists()  # written row: rerunning the cell trains it again

    # a fitted state from other settings is not reused
    benchmark.run_cell(config, spec, tmp_path / "other")
    changed = {**spec, "init_args": {**spec["init_args"], "coreset_sampling_ratio": 0.5}}
    row = benchmark.run_cell(config, changed, tmp_path / "other")
    assert fits == [1, 1, 1]
    assert "resumed_from_fitted_state" not in row
