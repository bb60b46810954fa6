"""PDN teacher distillation: tiny folder, checkpoint + resume, usable by HypAD, clear errors; teacher quality."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.utils import save_image

from anomalib_hyperbolic.backbones import provision_efficientnet_lite0
from anomalib_hyperbolic.models import HypAD
from anomalib_hyperbolic.models.hypad.distill import (
    DistillationTargets,
    build_pdn,
    distill_teacher,
    distill_teacher_on_training_split,
    main,
    training_normal_images,
)
from anomalib_hyperbolic.models.hypad.teacher_quality import nearest_neighbour_maps, teacher_quality
from anomalib_hyperbolic.testing import make_magnetic_tile_like

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


def test_cached_targets_train_the_same_teacher(folder: Path, tmp_path: Path) -> None:
    """Targets kept in memory (the default for small sets) give the streamed run's teacher, batch for batch."""
    cached = distill_teacher(folder, tmp_path / "cached.pth", steps=3, resume=False, **KW)
    streamed = distill_teacher(folder, tmp_path / "streamed.pth", steps=3, resume=False, cache_megabytes=0, **KW)
    a, b = torch.load(cached, weights_only=True), torch.load(streamed, weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_distill_from_a_file_list_and_the_backbone_normalisation(folder: Path, tmp_path: Path) -> None:
    files = sorted(folder.rglob("*.png"))
    output = distill_teacher(files, tmp_path / "list.pth", steps=1, resume=False, **KW)
    assert output.is_file()
    with pytest.raises(ValueError, match="empty list"):
        distill_teacher([], tmp_path / "none.pth", steps=1, **KW)
    # Lite0 was trained on inputs scaled with mean = std = 0.5, not ImageNet's: the targets use its own
    targets = DistillationTargets(KW["backbone"], KW["layers"], 384, pre_trained=False)
    torch.testing.assert_close(targets.mean.flatten(), torch.full((3,), 0.5))
    torch.testing.assert_close(targets.std.flatten(), torch.full((3,), 0.5))


def test_distill_on_a_training_split_reads_training_images_only(tmp_path: Path) -> None:
    root = make_magnetic_tile_like(tmp_path / "mt", n_normal=12, n_per_defect=2)
    data = {
        "class_path": "anomalib_hyperbolic.data.MagneticTile",
        "init_args": {"root": str(root), "split_seed": 0, "val_split_mode": "from_train", "val_split_ratio": 0.2},
    }
    files = training_normal_images(data)
    assert files
    assert all("MT_Free" in str(file) for file in files)
    assert len(files) < 12  # the test and validation normals are left out
    output = distill_teacher_on_training_split(tmp_path / "teacher.pth", data, steps=1, **KW)
    assert output.is_file()


def test_teacher_quality_rows(tmp_path: Path) -> None:
    """Nearest-neighbour AUROCs of the targets and a teacher, on generated defects."""
    from lightning.pytorch.trainer.states import TrainerFn

    from anomalib_hyperbolic.data import MagneticTile

    root = make_magnetic_tile_like(tmp_path / "mt", n_normal=12, n_per_defect=2)
    datamodule = MagneticTile(root=root, split_seed=0, val_split_mode="from_train", val_split_ratio=0.2)
    datamodule.setup(TrainerFn.FITTING)
    teacher = tmp_path / "teacher.pth"
    torch.save(build_pdn("small").state_dict(), teacher)
    rows = teacher_quality(
        {"random": teacher},
        KW["backbone"],
        KW["layers"],
        datamodule.train_data,
        datamodule.test_data,
        image_size=64,
        pre_trained=KW["pre_trained"],
    )
    assert [row["source"] for row in rows] == ["targets", "random"]
    for row in rows:
        assert 0.0 <= row["image_AUROC"] <= 1.0
        assert 0.0 <= row["pixel_AUROC"] <= 1.0
    assert rows[1]["test_mse"] > 0.5  # an untrained PDN is far from unit-variance standardised targets
    assert "test_mse" not in rows[0]


def test_nearest_neighbour_maps() -> None:
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    features = torch.tensor([[0.0, 3.0], [0.0, 4.0]]).view(1, 2, 1, 2)  # vectors (0, 0) and (3, 4)
    torch.testing.assert_close(nearest_neighbour_maps(bank, features), torch.zeros(1, 1, 2))
    shifted = features + torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)  # (1, 0) and (4, 4)
    torch.testing.assert_close(nearest_neighbour_maps(bank, shifted), torch.tensor([[[1.0, 1.0]]]))
    with pytest.raises(ValueError, match="does not match"):
        nearest_neighbour_maps(torch.zeros(3, 5), features)


def test_distill_on_random_crops(folder: Path, tmp_path: Path) -> None:
    """Crops of the resized images train the teacher (targets per crop); a bad crop size is named."""
    output = distill_teacher(
        folder, tmp_path / "crops.pth", steps=2, resume=False, crop_size=64, **{**KW, "image_size": 96}
    )
    checkpoint = torch.load(output.with_suffix(".pth.ckpt"), weights_only=True)
    assert checkpoint["config"]["crop_size"] == 64
    assert checkpoint["config"]["image_size"] == 96
    bf16 = distill_teacher(folder, tmp_path / "bf16.pth", steps=2, resume=False, bf16=True, **KW)
    assert torch.load(bf16.with_suffix(".pth.ckpt"), weights_only=True)["config"]["bf16"] is True
    state = torch.load(bf16, weights_only=True)
    assert all(value.dtype == torch.float32 for value in state.values())  # float32 weights under autocast
    HypAD(teacher_weights=bf16, imagenet_dir=None)  # the channels-last weights load into a plain PDN
    with pytest.raises(ValueError, match="crop_size"):
        distill_teacher(folder, tmp_path / "bad.pth", steps=1, crop_size=128, **{**KW, "image_size": 96})
