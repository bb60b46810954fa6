"""NEUSeg datamodule/dataset on miniature copies of the layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.errors import MisMatchError
from PIL import Image

from anomalib_hyperbolic.data import NEUSeg, NEUSegDataset
from anomalib_hyperbolic.data.datasets.base import UnreadableImageError
from anomalib_hyperbolic.data.datasets.neu_seg import make_neu_seg_dataset, read_class_ids
from anomalib_hyperbolic.testing import make_neu_seg_like


@pytest.fixture(scope="module")
def neu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_neu_seg_like(tmp_path_factory.mktemp("neu") / "neu_seg", n_training=27, n_test=6)


def test_official_split(neu_root: Path) -> None:
    samples = make_neu_seg_dataset(neu_root)
    assert (samples.split == "train").sum() == 27
    assert (samples.split == "test").sum() == 6
    assert (samples.label_index == 1).all()  # every image is defective, training ones included
    assert set(samples[samples.split == "train"].label) == {"inclusion", "patch", "scratch"}
    assert any("+" in label for label in samples[samples.split == "test"].label)  # two classes in one image
    assert samples.attrs["task"] == "segmentation"


def test_ratio_split_8_1_1(neu_root: Path) -> None:
    samples = make_neu_seg_dataset(neu_root, split_mode="ratio", split_seed=1)
    assert len(samples) == 33
    single = samples[~samples.label.str.contains(r"\+")]
    for _, group in single.groupby("label"):  # 9-11 single-class images per class: 7-9 / 1 / 1
        assert group.split.value_counts()["val"] == 1
        assert group.split.value_counts()["train"] >= 7
    again = make_neu_seg_dataset(neu_root, split_mode="ratio", split_seed=1)
    assert list(again.split) == list(samples.split)
    other = make_neu_seg_dataset(neu_root, split_mode="ratio", split_seed=2)
    assert list(other.split) != list(samples.split)


def test_masks_binary_and_per_class(neu_root: Path) -> None:
    dataset = NEUSegDataset(root=neu_root, split="test")
    for index in range(len(dataset)):
        item = dataset[index]
        ids = np.asarray(Image.open(item.mask_path))
        assert item.image.shape[0] == 3
        assert torch.equal(item.gt_mask.to(torch.uint8), torch.from_numpy((ids > 0).astype(np.uint8)))
        assert torch.equal(dataset.class_mask(index), torch.from_numpy(ids.astype(np.int64)))
    patch = NEUSegDataset(root=neu_root, split="test", category="patch")
    assert 0 < len(patch) < len(dataset)
    for index in range(len(patch)):
        item = patch[index]
        ids = np.asarray(Image.open(item.mask_path))
        assert torch.equal(item.gt_mask.to(torch.uint8), torch.from_numpy((ids == 2).astype(np.uint8)))
        assert "patch" in patch.samples.iloc[index].classes.split(",")


def test_palette_annotations_are_read_as_ids(tmp_path: Path) -> None:
    ids = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    image = Image.fromarray(ids, mode="P")
    image.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0, 0, 0, 200] + [0] * (256 * 3 - 12))
    image.save(tmp_path / "a.png")
    assert np.array_equal(read_class_ids(tmp_path / "a.png"), ids)
    Image.fromarray(np.full((2, 2), 9, np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b\.png.*class ids are 0-3"):
        read_class_ids(tmp_path / "b.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "c.png")
    with pytest.raises(UnreadableImageError, match=r"c\.png"):
        read_class_ids(tmp_path / "c.png")


def test_datamodule(neu_root: Path) -> None:
    official = NEUSeg(root=neu_root, num_workers=0)
    official.setup()
    assert len(official.train_data) == 27
    assert len(official.test_data) == 6  # anomalib must not move training images into test
    assert len(official.val_data) == 6
    ratio = NEUSeg(root=neu_root, split_mode="ratio", num_workers=0, train_batch_size=4)
    ratio.setup()
    assert len(ratio.train_data) + len(ratio.val_data) + len(ratio.test_data) == 33
    assert set(ratio.val_data.samples.image_path).isdisjoint(ratio.test_data.samples.image_path)
    batch = next(iter(ratio.train_dataloader()))  # all 40 x 40: collates without a resize
    assert batch.image.shape == (4, 3, 40, 40)
    assert batch.gt_label.all()
    per_class = NEUSeg(root=neu_root, category="scratch", num_workers=0)
    per_class.setup()
    assert per_class.category == "scratch"


def test_errors(neu_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing_root.*images/\{training,test\}"):
        make_neu_seg_dataset(tmp_path / "missing_root")
    root = tmp_path / "copy"
    shutil.copytree(neu_root, root)
    shutil.rmtree(root / "annotations" / "test")
    with pytest.raises(FileNotFoundError, match=r"annotations[/\\]test' is missing"):
        make_neu_seg_dataset(root)
    root = tmp_path / "copy2"
    shutil.copytree(neu_root, root)
    orphan = sorted((root / "images" / "training").glob("*.jpg"))[0]
    orphan.unlink()
    with pytest.raises(MisMatchError, match=rf"annotation\(s\) without an image.*{orphan.stem}\.png"):
        make_neu_seg_dataset(root)
    root = tmp_path / "copy3"
    shutil.copytree(neu_root, root)
    lonely = sorted((root / "annotations" / "test").glob("*.png"))[0]
    lonely.unlink()
    with pytest.raises(MisMatchError, match=rf"image\(s\) without an annotation.*{lonely.stem}\.jpg"):
        make_neu_seg_dataset(root)
    with pytest.raises(ValueError, match="category"):
        make_neu_seg_dataset(neu_root, category="rust")
    with pytest.raises(ValueError, match="split_mode"):
        make_neu_seg_dataset(neu_root, split_mode="folds")
    with pytest.raises(FileNotFoundError, match="NEU_Seg"):
        NEUSeg(root=tmp_path / "absent").prepare_data()
