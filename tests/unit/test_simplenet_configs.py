"""Every SimpleNet config of this repository constructs with its init_args (offline: random-init backbones)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from anomalib_hyperbolic.models import SimpleNet
from anomalib_hyperbolic.models.simplenet import DEFAULTS
from anomalib_hyperbolic.models.simplenet.extensions import ExtendedSimpleNetModel

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _benchmark_cells() -> dict[str, dict[str, Any]]:
    """Distinct SimpleNet init_args of ``configs/benchmark/*.yaml`` then ``archive/*.yaml``, keyed by file and cell."""
    cells: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    benchmark = CONFIGS / "benchmark"
    for path in sorted(benchmark.glob("*.yaml")) + sorted(benchmark.glob("archive/*.yaml")):
        for cell in yaml.safe_load(path.read_text()).get("models", []):
            if not cell.get("class_path", "").endswith(".SimpleNet"):
                continue
            key = json.dumps(cell.get("init_args", {}), sort_keys=True)
            if key not in seen:
                seen.add(key)
                cells[f"{path.relative_to(benchmark).with_suffix('')}: {cell['name']}"] = cell.get("init_args", {})
    return cells


BENCHMARK_CELLS = _benchmark_cells()


def test_the_benchmark_configs_have_simplenet_cells():
    assert len(BENCHMARK_CELLS) >= 10
    protocol = yaml.safe_load((CONFIGS / "benchmark" / "mt_cpu.yaml").read_text())["models"]
    mt_cpu_args = [cell["init_args"] for cell in protocol if cell["class_path"].endswith(".SimpleNet")]
    assert mt_cpu_args, "mt_cpu has a SimpleNet cell"
    assert all(args in BENCHMARK_CELLS.values() for args in mt_cpu_args)  # (listed once, under its first config)
    assert any("simplenet_long_confirm" in name for name in BENCHMARK_CELLS)


@pytest.mark.parametrize("name", list(BENCHMARK_CELLS))
def test_benchmark_cell_constructs_without_the_null_space_warning(name: str) -> None:
    """Same init_args (the local Lite0 file replaced by its random-init architecture), no rank warning."""
    init_args = dict(BENCHMARK_CELLS[name])
    if str(init_args.get("backbone", "")).endswith(".safetensors"):
        init_args["backbone"] = Path(init_args["backbone"]).stem  # tf_efficientnet_lite0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="SimpleNet features span")
        module = SimpleNet(**init_args, pre_trained=False)
    options = ("relative_noise", "feature_standardization", "distance", "ensemble_size")
    extended = any(init_args.get(key, getattr(DEFAULTS, key)) != getattr(DEFAULTS, key) for key in options)
    assert isinstance(module.model, ExtendedSimpleNetModel) == extended
    assert (module.synthetic_defects is not None) == bool(init_args.get("synthetic_anomalies", False))
    assert len(module.model.heads()) == init_args.get("ensemble_size", 1)


def test_model_config_spells_out_the_defaults():
    """``configs/simplenet.yaml`` sets every default of :data:`DEFAULTS` it names to its value."""
    init_args = yaml.safe_load((CONFIGS / "simplenet.yaml").read_text())["model"]["init_args"]
    for key, value in init_args.items():
        expected = getattr(DEFAULTS, key)
        assert (list(expected) if isinstance(expected, tuple) else expected) == value, key
    assert init_args["backbone"] == "wide_resnet50_2.tv_in1k"
    assert init_args["adaptor_optimizer"] == "adamw"
