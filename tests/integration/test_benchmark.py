"""The benchmark command on synthetic data: tables, plots, resumability."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from anomalib_hyperbolic import benchmark
from anomalib_hyperbolic.testing import make_mvtec_like_dataset


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
        "data": {
            "class_path": "anomalib.data.MVTecAD",
            "init_args": {"root": str(root), "category": "synthetic", "num_workers": 0, "train_batch_size": 4},
        },
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
