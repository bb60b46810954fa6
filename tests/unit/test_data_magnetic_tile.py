"""MagneticTile datamodule/dataset on miniature copies of the layout."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.errors import MisMatchError
from anomalib.models import Padim
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Resize

from anomalib_hyperbolic.data import MagneticTile, MagneticTileDataset
from anomalib_hyperbolic.data.datamodules import magnetic_tile as mt_module
from anomalib_hyperbolic.data.datasets.base import UnreadableImageError, read_image_checked
from anomalib_hyperbolic.data.datasets.magnetic_tile import DEFECT_TYPES, make_magnetic_tile_dataset
from anomalib_hyperbolic.testing import make_magnetic_tile_like


@pytest.fixture(scope="module")
def mt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_magnetic_tile_like(tmp_path_factory.mktemp("mt") / "magnetic_tile", n_normal=10, n_per_defect=4)


def _copy(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    return target


def test_one_class_split_counts_and_labels(mt_root: Path) -> None:
    samples = make_magnetic_tile_dataset(mt_root)
    train, test = samples[samples.split == "train"], samples[samples.split == "test"]
    assert len(train) == 8
    assert (train.label == "good").all()
    assert (train.label_index == 0).all()
    assert (test.label == "good").sum() == 2
    assert sorted(test[test.label_index == 1].label.unique()) == sorted(DEFECT_TYPES)
    assert (test[test.label_index == 1].label.value_counts() == 4).all()
    assert (samples[samples.label_index == 0].mask_path == "").all()
    defects = samples[samples.label_index == 1]
    pairs = zip(defects.image_path, defects.mask_path, strict=True)
    assert all(Path(m).stem == Path(i).stem and m.endswith(".png") for i, m in pairs)
    assert samples.attrs["task"] == "segmentation"


def test_split_is_seeded(mt_root: Path) -> None:
    def train_set(seed: int) -> set[str]:
        return set(make_magnetic_tile_dataset(mt_root, split="train", split_seed=seed).image_path)

    assert train_set(0) == train_set(0)
    assert any(train_set(0) != train_set(seed) for seed in range(1, 6))
    normals = set(make_magnetic_tile_dataset(mt_root).query("label_index == 0").image_path)
    test_normals = set(make_magnetic_tile_dataset(mt_root, split="test").query("label_index == 0").image_path)
    assert train_set(0).isdisjoint(test_normals)
    assert train_set(0) | test_normals == normals


def test_items_are_rgb_with_thresholded_masks(mt_root: Path) -> None:
    dataset = MagneticTileDataset(root=mt_root, split="test")
    sizes = set()
    for index in range(len(dataset)):
        item = dataset[index]
        assert item.image.shape[0] == 3
        assert item.image.dtype == torch.float32
        sizes.add(tuple(item.image.shape[-2:]))
        assert item.gt_mask.shape == item.image.shape[-2:]
        if int(item.gt_label) == 1:
            raw = np.asarray(Image.open(item.mask_path))
            assert set(np.unique(raw)) >= {0, 100, 255}  # anti-aliased border present in the file
            assert torch.equal(item.gt_mask.to(torch.uint8), torch.from_numpy((raw > 127).astype(np.uint8)))
        else:
            assert not item.gt_mask.any()
    assert len(sizes) > 1  # varied sizes, as in the real set


def test_image_reading_matches_anomalib(mt_root: Path) -> None:
    from anomalib.data.utils import read_image

    path = sorted((mt_root / "MT_Crack" / "Imgs").glob("*.jpg"))[0]
    assert Image.open(path).mode == "L"
    ours = read_image_checked(path)
    assert ours.shape[0] == 3
    assert torch.equal(ours, read_image(path, as_tensor=True))


def test_model_pre_processor_gives_common_size_batches(mt_root: Path) -> None:
    datamodule = MagneticTile(root=mt_root, eval_batch_size=6, num_workers=0)
    datamodule.setup()
    transform = Padim.configure_pre_processor(image_size=(64, 64)).transform
    AnomalibDataModule._update_subset_augmentations(datamodule.test_data, None, transform)
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape == (6, 3, 64, 64)
    assert batch.gt_mask.shape == (6, 64, 64)


def test_augmentations_resize_without_model(mt_root: Path) -> None:
    dataset = MagneticTileDataset(root=mt_root, split="test", augmentations=Resize((32, 48)))
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=dataset.collate_fn)))
    assert batch.image.shape == (4, 3, 32, 48)


def test_datamodule_setup(mt_root: Path) -> None:
    datamodule = MagneticTile(root=mt_root, num_workers=0)
    datamodule.setup()
    assert len(datamodule.train_data) == 8
    assert len(datamodule.test_data) == 22
    assert len(datamodule.val_data) == 22
    assert datamodule.train_data.task.value == "segmentation"


def test_ratio_split_supervised(mt_root: Path) -> None:
    datamodule = MagneticTile(root=mt_root, split_mode="ratio", split_ratios=(0.5, 0.25, 0.25), num_workers=0)
    datamodule.setup()
    train, val, test = (d.samples for d in (datamodule.train_data, datamodule.val_data, datamodule.test_data))
    assert len(train) + len(val) + len(test) == 30
    assert set(train.image_path).isdisjoint(test.image_path)
    assert set(val.image_path).isdisjoint(test.image_path)
    assert (train.label_index == 1).sum() == 10  # 2 of each class's 4
    assert len(train[train.label == "good"]) == 5
    assert val.groupby("label").size().to_dict() == {"good": 3, **dict.fromkeys(DEFECT_TYPES, 1)}  # 2.5 -> 3


def test_dra_protocols(mt_root: Path) -> None:
    general = make_magnetic_tile_dataset(mt_root, train_anomalies=3)
    train = general[general.split == "train"]
    assert (train.label_index == 1).sum() == 3
    assert (general[general.split == "test"].label_index == 1).sum() == 17
    hard = make_magnetic_tile_dataset(mt_root, train_anomalies=2, seen_anomaly_type="crack")
    assert list(hard[(hard.split == "train") & (hard.label_index == 1)].label) == ["crack", "crack"]
    assert "crack" not in set(hard[hard.split == "test"].label)
    with pytest.raises(ValueError, match="seen_anomaly_type"):
        make_magnetic_tile_dataset(mt_root, train_anomalies=1, seen_anomaly_type="dent")
    with pytest.raises(ValueError, match="only 4 anomalies"):
        make_magnetic_tile_dataset(mt_root, train_anomalies=5, seen_anomaly_type="crack")


def test_defect_type_subset(mt_root: Path) -> None:
    samples = make_magnetic_tile_dataset(mt_root, defect_types=("fray",))
    assert set(samples.label) == {"good", "fray"}
    with pytest.raises(ValueError, match="defect_types"):
        make_magnetic_tile_dataset(mt_root, defect_types=("scratch",))


def test_missing_root_names_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*MT_Free.*Imgs"):
        make_magnetic_tile_dataset(tmp_path / "nowhere")


def test_partial_folder(mt_root: Path, tmp_path: Path) -> None:
    root = _copy(mt_root, tmp_path)
    shutil.rmtree(root / "MT_Crack")
    with pytest.raises(FileNotFoundError, match=r"MT_Crack[/\\]Imgs' is missing"):
        make_magnetic_tile_dataset(root)
    assert len(make_magnetic_tile_dataset(root, defect_types=("blowhole", "fray")))  # fine without crack
    for path in (root / "MT_Fray" / "Imgs").glob("*.jpg"):
        path.unlink()
    (root / "MT_Fray" / "Imgs" / "x.png").unlink(missing_ok=True)
    with pytest.raises((FileNotFoundError, MisMatchError), match="MT_Fray"):
        make_magnetic_tile_dataset(root, defect_types=("fray",))


def test_image_without_mask_and_mask_without_image(mt_root: Path, tmp_path: Path) -> None:
    root = _copy(mt_root, tmp_path)
    mask = sorted((root / "MT_Break" / "Imgs").glob("*.png"))[0]
    mask.unlink()
    with pytest.raises(MisMatchError, match=rf"without a same-stem \.png mask.*{mask.stem}\.jpg"):
        make_magnetic_tile_dataset(root)
    root = _copy(mt_root, tmp_path / "again")
    image = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"))[0]
    image.unlink()
    with pytest.raises(MisMatchError, match=rf"without a same-stem \.jpg image.*{image.stem}\.png"):
        make_magnetic_tile_dataset(root)


def test_unreadable_image_is_named(mt_root: Path, tmp_path: Path) -> None:
    root = _copy(mt_root, tmp_path)
    broken = sorted((root / "MT_Uneven" / "Imgs").glob("*.jpg"))[0]
    broken.write_bytes(b"not a jpeg")
    dataset = MagneticTileDataset(root=root, split="test")
    index = list(dataset.samples.image_path).index(str(broken))
    with pytest.raises(UnreadableImageError, match=broken.name):
        dataset[index]


def test_bad_arguments(mt_root: Path) -> None:
    with pytest.raises(ValueError, match="split_mode"):
        make_magnetic_tile_dataset(mt_root, split_mode="half")
    with pytest.raises(ValueError, match="train_split_ratio"):
        make_magnetic_tile_dataset(mt_root, train_split_ratio=0.0)
    with pytest.raises(ValueError, match="split_ratios"):
        make_magnetic_tile_dataset(mt_root, split_mode="ratio", split_ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="mask_threshold"):
        MagneticTileDataset(root=mt_root, mask_threshold=300)


def test_prepare_data_does_not_download_existing(mt_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mt_module, "download_magnetic_tile", lambda *_: pytest.fail("must not download"))
    MagneticTile(root=mt_root).prepare_data()


def _fake_archive(mt_root: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as zip_file:
        for path in sorted(mt_root.rglob("*")):
            if path.is_file():
                zip_file.write(path, f"Magnetic-tile-defect-datasets.-master/{path.relative_to(mt_root).as_posix()}")


def test_download_code_path_offline(mt_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real download function, with ``urlretrieve`` served from a local zip of the fake layout."""
    source = tmp_path / "served.zip"
    _fake_archive(mt_root, source)
    calls = []

    def fake_urlretrieve(url: str, filename: Path, reporthook: object = None) -> None:
        calls.append(url)
        shutil.copyfile(source, filename)

    monkeypatch.setattr(mt_module, "urlretrieve", fake_urlretrieve)
    info = mt_module.DownloadInfo(
        name="magnetic_tile",
        url=mt_module.DOWNLOAD_INFO.url,
        hashsum=mt_module.magnetic_tile_checksum(mt_root),
        filename=mt_module.DOWNLOAD_INFO.filename,
    )
    monkeypatch.setattr(mt_module, "DOWNLOAD_INFO", info)
    root = tmp_path / "datasets" / "magnetic_tile"
    datamodule = MagneticTile(root=root, num_workers=0)
    datamodule.prepare_data()
    assert calls == [info.url]
    assert info.url.startswith("https://github.com/abin24/Magnetic-tile-defect-datasets./")
    assert (root / "MT_Free" / "Imgs").is_dir()
    assert not (root.parent / info.filename).exists()  # archive removed after extraction
    datamodule.setup()
    assert len(datamodule.train_data) == 8

    bad = mt_module.DownloadInfo(name="x", url=info.url, hashsum="0" * 64, filename=info.filename)
    with pytest.raises(ValueError, match="checksum"):
        mt_module.download_magnetic_tile(tmp_path / "other" / "magnetic_tile", bad)


def test_items_under_deterministic_augmentations_are_read_once(mt_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long schedule decodes and resizes each image once; random or changed augmentations are read again."""
    from torchvision.transforms import v2

    from anomalib_hyperbolic.data.datasets import base

    reads: list[str] = []
    monkeypatch.setattr(base, "read_image_checked", lambda path: reads.append(str(path)) or read_image_checked(path))
    dataset = MagneticTileDataset(root=mt_root, split="test", augmentations=Resize((32, 32)))
    first = [dataset[index] for index in range(3)]
    again = [dataset[index] for index in range(3)]
    assert len(reads) == 3
    for kept, fresh in zip(first, again, strict=True):
        assert torch.equal(kept.image, fresh.image)
        assert torch.equal(kept.gt_mask, fresh.gt_mask)
        assert kept is not fresh
    dataset.augmentations = Resize((16, 16))  # another transform: a miss
    assert dataset[0].image.shape[-2:] == (16, 16)
    assert len(reads) == 4
    dataset.augmentations = v2.Compose([Resize((32, 32)), v2.RandomHorizontalFlip()])  # random: never kept
    dataset[0], dataset[0]
    assert len(reads) == 6
    dataset.item_cache_megabytes = 0  # switched off
    dataset.augmentations = Resize((32, 32))
    dataset[1], dataset[1]
    assert len(reads) == 8
    assert base.is_deterministic(None)
    assert not base.is_deterministic(v2.RandomCrop(8))
