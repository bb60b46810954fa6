"""Every model config in ``configs/`` parses with ``anomalib train --config`` (jsonargparse type checks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
#: measured recipes (configs/recipes/): parsed the same way
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS + RECIPES, ids=[path.stem for path in CONFIGS + RECIPES])
def test_model_config_parses_with_the_anomalib_cli(config: Path, capsys: pytest.CaptureFixture[str], monkeypatch):
    from anomalib.cli.cli import main

    monkeypatch.setattr(sys, "argv", ["anomalib", "fit", "--config", str(config), "--print_config"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    assert printed["model"]["class_path"] == written["model"]["class_path"]
    for key, value in written["model"]["init_args"].items():  # every argument reached the model unchanged
        assert printed["model"]["init_args"][key] == value, key
    for plugin in written.get("trainer", {}).get("plugins") or []:  # e.g. bf16 training steps only
        assert plugin["class_path"] in [entry["class_path"] for entry in printed["trainer"]["plugins"]]


def test_there_is_a_config_per_model():
    from anomalib_hyperbolic import models

    assert {path.stem for path in CONFIGS} == {name.lower() for name in models.__all__}


def test_the_simplenet_recipe_is_the_measured_mt_cpu_cell():
    recipe = yaml.safe_load((ROOT / "configs" / "recipes" / "simplenet_magnetic_tile.yaml").read_text())
    protocol = yaml.safe_load((ROOT / "configs" / "benchmark" / "mt_cpu.yaml").read_text())
    cell = next(cell for cell in protocol["models"] if cell["name"] == "SimpleNet (160 epochs)")
    assert recipe["model"]["init_args"] == cell["init_args"]
    assert recipe["trainer"]["max_epochs"] == cell["max_epochs"]
    assert recipe["data"]["init_args"]["train_batch_size"] == cell["data_overrides"]["train_batch_size"]
