"""The datamodules through anomalib's own entry points: CLI parsing, ``get_datamodule`` and one real run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anomalib_hyperbolic.testing import make_elpv_like, make_magnetic_tile_like, make_neu_seg_like

REPO_SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli_data")
    return {
        "MagneticTile": make_magnetic_tile_like(base / "mt", n_normal=12, n_per_defect=2),
        "NEUSeg": make_neu_seg_like(base / "neu"),
        "ELPV": make_elpv_like(base / "elpv"),
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("MagneticTile", "MagneticTile"),
        ("anomalib_hyperbolic.data.MagneticTile", "MagneticTile"),
        ("NEUSeg", "NEUSeg"),
        ("ELPV", "ELPV"),
    ],
)
def test_cli_resolves_datamodule(data: str, expected: str, roots: dict[str, Path]) -> None:
    from anomalib.cli import AnomalibCLI

    args = ["fit", "--model", "Padim", "--model.pre_trained", "false", "--data", data]
    args += ["--data.root", str(roots[expected]), "--data.num_workers", "0"]
    cli = AnomalibCLI(args, run=False)
    assert type(cli.datamodule).__name__ == expected
    assert Path(cli.datamodule.root) == roots[expected]


def test_get_datamodule_by_name(roots: dict[str, Path]) -> None:
    from anomalib.data import get_datamodule

    datamodule = get_datamodule({"data": {"class_path": "NEUSeg", "init_args": {"root": str(roots["NEUSeg"])}}})
    assert type(datamodule).__name__ == "NEUSeg"


def test_anomalib_train_command(roots: dict[str, Path], tmp_path: Path) -> None:
    """``anomalib train`` end to end (fit + test) on the miniature Magnetic Tile, varied image sizes."""
    command = [
        sys.executable,
        "-c",
        "from anomalib.cli.cli import main; main()",
        "train",
        "--model",
        "Padim",
        "--model.backbone",
        "resnet18",
        "--model.pre_trained",
        "false",
        "--data",
        "anomalib_hyperbolic.data.MagneticTile",
        "--data.root",
        str(roots["MagneticTile"]),
        "--data.num_workers",
        "0",
        "--data.train_batch_size",
        "8",
        "--data.eval_batch_size",
        "8",
        "--trainer.max_epochs",
        "1",
        "--logging.log_graph",
        "false",
        "--default_root_dir",
        str(tmp_path / "results"),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_SRC), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "image_AUROC" in output
    assert "pixel_AUROC" in output
