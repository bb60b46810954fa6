"""Every model config in ``configs/`` parses with ``anomalib train --config`` (jsonargparse type checks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
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


def test_there_is_a_config_per_model():
    from anomalib_hyperbolic import models

    assert {path.stem for path in CONFIGS} == {name.lower() for name in models.__all__}
