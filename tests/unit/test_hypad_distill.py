"""PDN teacher distillation: tiny folder, checkpoint + resume, usable by HypAD, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.utils import save_image

from anomalib_hyperbolic.backbones import provision_efficientnet_lite0
from anomalib_hyperbolic.models import HypAD
from anomalib_hyperbolic.models.hypad.distill import distill_teacher, main

LITE0 = Path("/work/cache/tf_efficientnet_lite0.safetensors")
KW = {
    "backbone": str(LITE0) if LITE0.is_file() else "tf_efficientnet_lite0",
    "pre_trained": LITE0.is_file(),
    "layers": ["blocks.2", "blocks.4"],
    "image_size": 64,
    "batch_size": 2,
    "stats_images": 2,
    "progress": False,
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images" / "nested"
    root.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for i in range(3):
        save_image(torch.rand(3, 70, 80, generator=generator), root / f"{i}.png")
    return tmp_path / "images"


def test_distill_checkpoint_and_resume(folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "teacher.pth"
    distill_teacher(folder, output, steps=2, checkpoint_every=1, **KW)
    checkpoint = torch.load(output.with_suffix(".pth.ckpt"), weights_only=True)
    assert checkpoint["step"] == 2
    first = {k: v.clone() for k, v in checkpoint["teacher"].items()}

    distill_teacher(folder, output, steps=3, checkpoint_every=1, **KW)  # resumes at step 2
    resumed = torch.load(output.with_suffix(".pth.ckpt"), weights_only=True)
    assert resumed["step"] == 3
    torch.testing.assert_close(resumed["target_mean"], checkpoint["target_mean"])  # statistics kept
    assert any(not torch.equal(first[k], resumed["teacher"][k]) for k in first)  # one more step was taken

    model = HypAD(teacher_weights=output, imagenet_dir=None)
    torch.testing.assert_close(model.model.teacher.conv1.weight, resumed["teacher"]["conv1.weight"])

    with pytest.raises(ValueError, match="was made with"):
        distill_teacher(folder, output, steps=4, **{**KW, "layers": ["blocks.2"]})


def test_distill_command_line(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "cli.pth"
    # The CLI always loads pretrained weights: give it a local file (no hub on CI machines).
    weights = LITE0
    if not LITE0.is_file():
        weights = provision_efficientnet_lite0(output=tmp_path / "lite0.safetensors").weights_file
    args = ["--image-dir", str(folder), "--output", str(output), "--backbone", str(weights)]
    args += ["--layers", "blocks.2", "blocks.4", "--image-size", "64", "--steps", "1", "--batch-size", "2"]
    args += ["--stats-images", "2", "--no-progress"]
    assert main(args) == 0
    assert output.is_file()
    assert "teacher:" in capsys.readouterr().out


def test_distill_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="contains no images"):
        distill_teacher(empty, tmp_path / "t.pth", steps=1, **KW)
    with pytest.raises(ValueError, match="not a readable directory"):
        distill_teacher(tmp_path / "missing", tmp_path / "t.pth", steps=1, **KW)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"Cannot read image .*bad.png"):
        distill_teacher(broken, tmp_path / "t.pth", steps=1, **KW)
    with pytest.raises(ValueError, match="Unknown PDN size"):
        distill_teacher(broken, tmp_path / "t.pth", steps=1, model_size="xl", **{k: v for k, v in KW.items()})
    with pytest.raises(SystemExit):
        main(["--image-dir", str(empty), "--output", str(tmp_path / "t.pth")])
