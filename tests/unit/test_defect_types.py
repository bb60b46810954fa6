"""One path-to-defect-type parser, on the paths this package's datasets (and anomalib's MVTec AD) produce."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from anomalib.data.datasets.image.mvtecad import make_mvtec_ad_dataset

from anomalib_hyperbolic.data import defect_type_from_path
from anomalib_hyperbolic.data.datasets.elpv import make_elpv_dataset
from anomalib_hyperbolic.data.datasets.magnetic_tile import make_magnetic_tile_dataset
from anomalib_hyperbolic.data.datasets.neu_seg import make_neu_seg_dataset
from anomalib_hyperbolic.data.few_shot import anomaly_classes
from anomalib_hyperbolic.metrics import _CategoryIoU
from anomalib_hyperbolic.testing import (
    make_elpv_like,
    make_magnetic_tile_like,
    make_mvtec_like_dataset,
    make_neu_seg_like,
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/data/mvtec/bottle/test/broken_large/000.png", "broken_large"),
        ("mvtec/bottle/test/good/000.png", "good"),
        ("mvtec/bottle/train/good/000.png", "good"),
        ("/data/magnetic_tile/MT_Blowhole/Imgs/exp1_num_4727.jpg", "blowhole"),
        ("magnetic_tile/MT_Free/Imgs/exp0_num_743.jpg", "good"),
        ("datasets/elpv/images/cell0001.png", "elpv"),  # ELPV's type (mono/poly) is in labels.csv
        ("neu_seg/images/training/000001.jpg", "neu_seg"),  # NEU-Seg's types are in its masks
        ("neu_seg/images/test/000002.jpg", "neu_seg"),
        ("x.png", ""),
        ("/x.png", ""),
    ],
)
def test_defect_type_from_path(path: str, expected: str) -> None:
    assert defect_type_from_path(path) == expected
    assert defect_type_from_path(Path(path)) == expected


def test_magnetic_tile_paths_give_the_dataset_labels(tmp_path: Path) -> None:
    root = make_magnetic_tile_like(tmp_path / "magnetic_tile", n_normal=2, n_per_defect=1, min_size=16, max_size=16)
    samples = make_magnetic_tile_dataset(root)
    assert set(samples.label) == {"good", "blowhole", "break", "crack", "fray", "uneven"}
    assert samples.image_path.map(defect_type_from_path).tolist() == samples.label.tolist()


def test_mvtec_paths_give_the_dataset_labels(tmp_path: Path) -> None:
    root = make_mvtec_like_dataset(tmp_path / "mvtec", n_train=2, n_test_good=1, n_test_defect=2, image_size=16)
    samples = make_mvtec_ad_dataset(root / "synthetic")
    assert set(samples.label) == {"good", "blob", "scratch"}
    assert samples.image_path.map(defect_type_from_path).tolist() == samples.label.tolist()


def test_elpv_and_neu_seg_keep_their_types_out_of_the_path(tmp_path: Path) -> None:
    """Every image of these sets is one category by path; their ``label`` column names the classes."""
    elpv = make_elpv_dataset(make_elpv_like(tmp_path / "elpv", image_size=8))
    assert set(elpv.image_path.map(defect_type_from_path)) == {"elpv"}
    anomalous = elpv[elpv.label_index == 1]
    assert set(anomaly_classes(anomalous)) == {"mono", "poly"}  # the few-shot sampler reads the label first
    neu = make_neu_seg_dataset(make_neu_seg_like(tmp_path / "neu_seg", n_training=3, n_test=3, image_size=16))
    assert set(neu.image_path.map(defect_type_from_path)) == {"neu_seg"}


def test_metrics_and_few_shot_use_the_one_parser() -> None:
    assert _CategoryIoU().category_of is defect_type_from_path
    samples = {"image_path": ["/d/MT_Crack/Imgs/a.jpg", "/d/test/hole/b.png"], "label": ["abnormal"] * 2}
    assert anomaly_classes(pd.DataFrame(samples)).tolist() == ["crack", "hole"]
