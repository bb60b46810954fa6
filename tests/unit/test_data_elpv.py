"""ELPV datamodule/dataset on miniature copies and (when installed) the elpv-dataset package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_hyperbolic.data import ELPV, ELPVDataset
from anomalib_hyperbolic.data.datasets import elpv as elpv_module
from anomalib_hyperbolic.data.datasets.elpv import make_elpv_dataset, materialize_elpv, read_elpv_labels
from anomalib_hyperbolic.testing import make_elpv_like


@pytest.fixture(scope="module")
def elpv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 8 normals and 2 cells of each other probability per type (mono, poly): 16 / 4 / 4 / 4
    return make_elpv_like(tmp_path_factory.mktemp("elpv") / "elpv")


def test_default_protocol(elpv_root: Path) -> None:
    samples = make_elpv_dataset(elpv_root)
    assert set(samples.probability) == {0.0, 1.0}  # 1/3 and 2/3 left out
    train, test = samples[samples.split == "train"], samples[samples.split == "test"]
    assert len(train) == 12
    assert (train.label_index == 0).all()
    assert (test.label_index == 0).sum() == 4
    assert test[test.label_index == 1].label.value_counts().to_dict() == {"mono": 2, "poly": 2}
    assert (samples.mask_path == "").all()
    assert samples.attrs["task"] == "classification"


def test_thresholds_and_cell_types(elpv_root: Path) -> None:
    any_defect = make_elpv_dataset(elpv_root, anomaly_min_probability=0.3)
    assert (any_defect.label_index == 1).sum() == 12
    lenient = make_elpv_dataset(elpv_root, normal_max_probability=0.34, anomaly_min_probability=0.6)
    assert (lenient.label_index == 0).sum() == 20
    mono = make_elpv_dataset(elpv_root, cell_types=("mono",))
    assert set(mono.cell_type) == {"mono"}
    with pytest.raises(ValueError, match="normal_max_probability"):
        make_elpv_dataset(elpv_root, normal_max_probability=0.5, anomaly_min_probability=0.5)
    with pytest.raises(ValueError, match="cell_types"):
        make_elpv_dataset(elpv_root, cell_types=("thin-film",))


def test_dra_hard_setting(elpv_root: Path) -> None:
    samples = make_elpv_dataset(elpv_root, train_anomalies=1, seen_anomaly_type="poly")
    train_anomalies = samples[(samples.split == "train") & (samples.label_index == 1)]
    assert list(train_anomalies.label) == ["poly"]
    assert set(samples[(samples.split == "test") & (samples.label_index == 1)].label) == {"mono"}


def test_items_and_batches_are_image_level(elpv_root: Path) -> None:
    datamodule = ELPV(root=elpv_root, num_workers=0, eval_batch_size=8)
    datamodule.prepare_data()  # already complete: must not touch the package
    datamodule.setup()
    assert datamodule.task.value == "classification"
    item = datamodule.test_data[0]
    assert item.image.shape == (3, 40, 40)
    assert item.gt_mask is None
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape == (8, 3, 40, 40)
    assert batch.gt_mask is None
    assert batch.gt_label.dtype == torch.bool


def test_materialize_is_idempotent(elpv_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elpv_module, "_package_data_dir", lambda: elpv_root)  # a fake "package"
    target = materialize_elpv(tmp_path / "cache")
    assert len(read_elpv_labels(target / "labels.csv")) == 28
    assert (target / "images" / "cell0001.png").read_bytes() == (elpv_root / "images" / "cell0001.png").read_bytes()
    monkeypatch.setattr(elpv_module.shutil, "copyfile", lambda *_: pytest.fail("copied twice"))
    materialize_elpv(target)
    (target / "images" / "cell0003.png").unlink()  # incomplete cache: redone
    monkeypatch.undo()
    monkeypatch.setattr(elpv_module, "_package_data_dir", lambda: elpv_root)
    materialize_elpv(target)
    assert (target / "images" / "cell0003.png").is_file()


def test_errors(elpv_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent[/\\]labels\.csv' is missing"):
        ELPVDataset(root=tmp_path / "absent")
    broken = tmp_path / "broken"
    (broken / "images").mkdir(parents=True)
    (broken / "labels.csv").write_text("images/cell0001.png  1.0  mono\n")
    with pytest.raises(FileNotFoundError, match=r"cell0001\.png"):
        make_elpv_dataset(broken)
    (broken / "labels.csv").write_text("images/cell0001.png  high  mono\n")
    with pytest.raises(ValueError, match=r"labels\.csv:1"):
        make_elpv_dataset(broken)


def test_real_package_counts(tmp_path: Path) -> None:
    pytest.importorskip("elpv_dataset")
    datamodule = ELPV(root=tmp_path / "elpv", num_workers=0)
    datamodule.prepare_data()
    datamodule.setup()
    table = read_elpv_labels(tmp_path / "elpv" / "labels.csv")
    assert len(table) == 2624
    assert table.probability.round(3).value_counts().to_dict() == {0.0: 1508, 1.0: 715, 0.333: 295, 0.667: 106}
    train, test = datamodule.train_data.samples, datamodule.test_data.samples
    assert len(train) == 1131
    assert (test.label_index == 0).sum() == 377
    assert (test.label_index == 1).sum() == 715
    assert set(test[test.label_index == 1].label) == {"mono", "poly"}
