"""FewShotAnomalies: DRA's general and hard protocols on synthetic MVTec-format data."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from anomalib.data import Folder, MVTecAD

from anomalib_hyperbolic.data import FewShotAnomalies
from anomalib_hyperbolic.data.few_shot import BalancedBatchSampler, anomaly_classes, sample_few_shot
from anomalib_hyperbolic.synthesis import cutmix_pseudo_anomalies, random_pseudo_anomalies
from anomalib_hyperbolic.testing import make_mvtec_like_dataset

N_DEFECT = 6  # per defect type (blob, scratch) -> 12 test anomalies


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mvtec_like_dataset(
        tmp_path_factory.mktemp("few_shot"), n_train=6, n_test_good=4, n_test_defect=N_DEFECT, image_size=32
    )


def _setup(root: Path, **kwargs: object) -> FewShotAnomalies:
    inner = MVTecAD(root=root, category="synthetic", train_batch_size=4, eval_batch_size=4, num_workers=0)
    datamodule = FewShotAnomalies(inner, **kwargs)
    datamodule.setup()
    return datamodule


def _anomalies(samples: pd.DataFrame) -> set[str]:
    return set(samples.loc[samples.label_index.astype(int) == 1, "image_path"])


def _test_and_val(datamodule: FewShotAnomalies) -> set[str]:
    return set(datamodule.test_data.samples.image_path) | set(datamodule.val_data.samples.image_path)


@pytest.mark.parametrize("shots", [1, 3])
def test_general_counts_and_removal(root: Path, shots: int) -> None:
    datamodule = _setup(root, num_anomalies=shots, max_anomalies=4, seed=0)
    train = datamodule.train_data.samples
    assert (train.label_index == 1).sum() == shots
    assert (train.label_index == 0).sum() == 6
    assert set(train.split) == {"train"}
    sampled = set(datamodule.sampled_anomalies)
    assert sampled == _anomalies(train)
    evaluated = _test_and_val(datamodule)
    assert not sampled & evaluated
    # max(K, max_anomalies) = 4 anomalies leave the test set (MVTecAD validates on the test set)
    assert len(_anomalies(datamodule.test_data.samples)) == 2 * N_DEFECT - 4
    assert datamodule.train_data.task == datamodule.test_data.task


def test_zero_shot_holds_out_the_same_anomalies_for_unsupervised_peers(root: Path) -> None:
    peer = _setup(root, num_anomalies=0, max_anomalies=3, seed=3)
    few = _setup(root, num_anomalies=3, max_anomalies=3, seed=3)
    assert (peer.train_data.samples.label_index == 1).sum() == 0
    assert set(peer.test_data.samples.image_path) == set(few.test_data.samples.image_path)
    assert len(_anomalies(peer.test_data.samples)) == 2 * N_DEFECT - 3
    # without max_anomalies, K = 0 leaves the test set as it was
    untouched = _setup(root, num_anomalies=0, seed=3)
    assert len(_anomalies(untouched.test_data.samples)) == 2 * N_DEFECT


def test_one_shot_is_subset_of_ten_shot_and_test_sets_equal(root: Path) -> None:
    one = _setup(root, num_anomalies=1, max_anomalies=5, seed=3)
    five = _setup(root, num_anomalies=5, max_anomalies=5, seed=3)
    assert one.sampled_anomalies == five.sampled_anomalies[:1]
    assert set(one.test_data.samples.image_path) == set(five.test_data.samples.image_path)
    assert set(one.val_data.samples.image_path) == set(five.val_data.samples.image_path)


def test_reproducible_and_seed_dependent(root: Path) -> None:
    first = _setup(root, num_anomalies=3, max_anomalies=3, seed=7).sampled_anomalies
    again = _setup(root, num_anomalies=3, max_anomalies=3, seed=7).sampled_anomalies
    other = _setup(root, num_anomalies=3, max_anomalies=3, seed=8).sampled_anomalies
    assert first == again
    assert first != other


def test_hard_protocol(root: Path) -> None:
    datamodule = _setup(root, num_anomalies=2, protocol="hard", anomaly_class="blob", seed=0)
    train = datamodule.train_data.samples
    assert (train.label_index == 1).sum() == 2
    assert all("/blob/" in path for path in datamodule.sampled_anomalies)
    evaluated = datamodule.test_data.samples
    anomalous = evaluated[evaluated.label_index == 1]
    assert len(anomalous) == N_DEFECT
    assert set(anomalous.label) == {"scratch"}  # every blob left the test set
    one = _setup(root, num_anomalies=1, protocol="hard", anomaly_class="blob", seed=0)
    assert one.sampled_anomalies == datamodule.sampled_anomalies[:1]
    assert _test_and_val(one) == _test_and_val(datamodule)


def test_sampled_files_are_logged(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="anomalib_hyperbolic.data.few_shot"):
        datamodule = _setup(root, num_anomalies=2, max_anomalies=2, seed=0)
    assert all(path in caplog.text for path in datamodule.sampled_anomalies)


def test_zero_shots_keeps_datamodule_one_class(root: Path) -> None:
    datamodule = _setup(root, num_anomalies=0)
    assert (datamodule.train_data.samples.label_index == 0).all()
    assert len(_anomalies(datamodule.test_data.samples)) == 2 * N_DEFECT


def test_errors(root: Path) -> None:
    with pytest.raises(ValueError, match=r"only 12 anomalies|would leave no"):
        _setup(root, num_anomalies=20, max_anomalies=0)
    with pytest.raises(ValueError, match="leave no anomaly"):
        _setup(root, num_anomalies=2, max_anomalies=12)
    with pytest.raises(ValueError, match=r"Unknown anomaly_class='hole'.*\['blob', 'scratch'\]"):
        _setup(root, num_anomalies=1, protocol="hard", anomaly_class="hole")
    with pytest.raises(ValueError, match="has only 6 images"):
        _setup(root, num_anomalies=7, protocol="hard", anomaly_class="blob")
    with pytest.raises(ValueError, match="needs anomaly_class"):
        FewShotAnomalies(MVTecAD(root=root, category="synthetic"), protocol="hard")
    with pytest.raises(ValueError, match="protocol must be one of"):
        FewShotAnomalies(MVTecAD(root=root, category="synthetic"), protocol="easy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_anomalies must be >= 0"):
        FewShotAnomalies(MVTecAD(root=root, category="synthetic"), num_anomalies=-1)
    with pytest.raises(ValueError, match="only used by protocol='hard'"):
        _setup(root, num_anomalies=1, anomaly_class="blob")


def test_hard_protocol_on_one_class_dataset(tmp_path: Path) -> None:
    one_class_root = make_mvtec_like_dataset(
        tmp_path, n_train=4, n_test_good=2, n_test_defect=3, image_size=32, defect_types=("blob",)
    )
    with pytest.raises(ValueError, match="at least two anomaly classes"):
        _setup(one_class_root, num_anomalies=1, protocol="hard", anomaly_class="blob")


def test_folder_datamodule_classes_from_folders(root: Path) -> None:
    base = root / "synthetic"
    inner = Folder(
        name="synthetic",
        root=base,
        normal_dir="train/good",
        abnormal_dir=["test/blob", "test/scratch"],
        normal_test_dir="test/good",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    datamodule = FewShotAnomalies(inner, num_anomalies=2, protocol="hard", anomaly_class="scratch", seed=1)
    datamodule.setup()
    assert datamodule.anomaly_classes == ("blob", "scratch")
    assert all("/scratch/" in path for path in datamodule.sampled_anomalies)


def test_anomaly_classes_skip_image_folders() -> None:
    samples = pd.DataFrame(
        {
            "image_path": ["/d/MT_Crack/Imgs/a.jpg", "/d/test/hole/b.png"],
            "label": ["abnormal", "abnormal"],
            "label_index": [1, 1],
        }
    )
    assert anomaly_classes(samples).tolist() == ["crack", "hole"]  # MagneticTile's label for MT_Crack
    with pytest.raises(ValueError, match="class_column"):
        anomaly_classes(samples, class_column="kind")


def test_sample_few_shot_table_only() -> None:
    samples = pd.DataFrame(
        {
            "image_path": [f"/x/{i:02d}.png" for i in range(10)],
            "label": ["good"] * 4 + ["a"] * 3 + ["b"] * 3,
            "label_index": [0] * 4 + [1] * 6,
            "split": ["test"] * 10,
        }
    )
    split = sample_few_shot(samples, 2, max_anomalies=3, seed=0)
    assert len(split.train_anomalies) == 2
    assert len(split.test) == 10 - 3
    assert split.classes == ("a", "b")


def test_balanced_batches(root: Path) -> None:
    datamodule = _setup(root, num_anomalies=1, max_anomalies=1, seed=0, train_batches_per_epoch=3)
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 3
    for batch in batches:
        assert batch.gt_label.sum() == 2  # half of the batch of 4: the one anomaly, repeated (cycling)
    labels = [0] * 10 + [1]
    sampler = BalancedBatchSampler(labels, batch_size=6, seed=0)
    first, second = list(sampler), list(sampler)
    assert len(first) == 4  # ceil(10 normals / 3 per batch)
    assert first != second  # a new draw every epoch...
    assert list(BalancedBatchSampler(labels, batch_size=6, seed=0)) == first  # ...reproducible from the seed
    with pytest.raises(ValueError, match="both normal and anomalous"):
        BalancedBatchSampler([0, 0, 0], batch_size=2)


def test_cutmix_pseudo_anomalies() -> None:
    images = torch.rand(3, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    out, masks = cutmix_pseudo_anomalies(images, generator=generator)
    assert out.shape == images.shape
    assert masks.shape == (3, 1, 32, 32)
    for index in range(3):
        area = masks[index].mean().item()
        assert 0.01 < area < 0.2
        changed = (out[index] != images[index]).any(dim=0)
        assert not changed[masks[index, 0] == 0].any()  # only the pasted rectangle changes
    again, _ = cutmix_pseudo_anomalies(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    _mixed, chosen, pasted = random_pseudo_anomalies(images, probability=1.0)
    assert chosen.all()
    assert (pasted.flatten(1).sum(1) > 0).all()
    _, none, _ = random_pseudo_anomalies(images, probability=0.0)
    assert not none.any()
    with pytest.raises(ValueError, match="area_ratio"):
        cutmix_pseudo_anomalies(images, area_ratio=(0.5, 0.1))


def test_cutmix_official_jitter_keeps_gray_gray() -> None:
    gray = torch.rand(4, 1, 32, 32).repeat(1, 3, 1, 1)
    out, masks = cutmix_pseudo_anomalies(gray, generator=torch.Generator().manual_seed(1))
    assert (masks.flatten(1).sum(1) > 0).all()
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-5, rtol=0)  # hue/saturation: no colour on gray
    torch.testing.assert_close(out[:, 0], out[:, 2], atol=1e-5, rtol=0)
    assert out.min() >= 0
    assert out.max() <= 1
    with pytest.raises(ValueError, match="color_jitter"):
        cutmix_pseudo_anomalies(gray, color_jitter=(0.1, 0.1, 0.1, 0.9))


def test_balanced_sampler_cycles_anomalies() -> None:
    labels = [0] * 12 + [1] * 3
    sampler = BalancedBatchSampler(labels, batch_size=6, num_batches=3, seed=0)
    anomalies = [index for batch in sampler for index in batch if labels[index] == 1]
    # cycling permutations: each window of 3 consecutive draws holds every anomaly once
    for start in range(0, len(anomalies), 3):
        assert sorted(anomalies[start : start + 3]) == [12, 13, 14]
    normals = [index for batch in BalancedBatchSampler(labels, batch_size=6, num_batches=4, seed=0) for index in batch]
    normals = [index for index in normals if labels[index] == 0]
    assert sorted(normals) == list(range(12))  # 12 normals in 4 batches of 3: one permutation


@pytest.mark.parametrize("batch_size", [4, 6])
def test_rank_aware_sampler_partitions_the_single_process_batches(batch_size: int) -> None:
    labels = [0] * 9 + [1] * 2 + [0] * 3 + [1]
    single = BalancedBatchSampler(labels, batch_size=2 * batch_size, num_batches=5, seed=3)
    ranks = [
        BalancedBatchSampler(labels, batch_size=batch_size, num_batches=5, seed=3, rank=r, num_replicas=2)
        for r in range(2)
    ]
    for _epoch in range(2):  # the streams continue across epochs identically
        expected = list(single)
        shares = [list(sampler) for sampler in ranks]
        assert len(shares[0]) == len(shares[1]) == len(expected) == 5
        for whole, first, second in zip(expected, *shares, strict=True):
            assert sorted(first + second) == sorted(whole)
            assert len(first) == len(second) == batch_size
            assert sum(labels[i] for i in first) == sum(labels[i] for i in second)  # balanced per rank
            normal_whole = [i for i in whole if labels[i] == 0]
            assert not set(i for i in first if labels[i] == 0) & set(i for i in second if labels[i] == 0)
            assert len(normal_whole) == batch_size
    # set_epoch (Lightning) replays epoch e whatever came before
    ranks[0].set_epoch(0)
    again = BalancedBatchSampler(labels, batch_size=batch_size, num_batches=5, seed=3, rank=0, num_replicas=2)
    assert list(ranks[0]) == list(again)
    with pytest.raises(ValueError, match="rank"):
        BalancedBatchSampler(labels, batch_size=4, rank=2, num_replicas=2)


def test_lightning_injects_a_distributed_sampler(root: Path) -> None:
    """Lightning re-creates the batch sampler with sampler=DistributedSampler under DDP: rank/replicas are kept."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

    datamodule = _setup(root, num_anomalies=2, seed=0, train_batches_per_epoch=3)
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = datamodule.train_dataloader()
    assert isinstance(loader.batch_sampler, BalancedBatchSampler)
    shares = []
    for rank in range(2):
        injected = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True)
        updated = _update_dataloader(loader, injected)
        assert isinstance(updated.batch_sampler, BalancedBatchSampler)
        assert (updated.batch_sampler.rank, updated.batch_sampler.num_replicas) == (rank, 2)
        shares.append(list(updated.batch_sampler))
    single = BalancedBatchSampler(
        datamodule.train_data.samples.label_index.astype(int).tolist(), batch_size=8, num_batches=3, seed=0
    )
    for whole, first, second in zip(single, *shares, strict=True):
        assert sorted(first + second) == sorted(whole)


def test_general_protocol_removes_only_the_sampled_anomalies_by_default(root: Path) -> None:
    datamodule = _setup(root, num_anomalies=2, seed=0)
    assert len(_anomalies(datamodule.test_data.samples)) == 2 * N_DEFECT - 2
    again = _setup(root, num_anomalies=2, seed=0)  # every DDP rank runs _setup: the same split
    assert again.sampled_anomalies == datamodule.sampled_anomalies
    assert list(again.test_data.samples.image_path) == list(datamodule.test_data.samples.image_path)
    kept = _setup(root, num_anomalies=2, max_anomalies=5, seed=0)  # opt-in: equal test sets across K <= 5
    assert len(_anomalies(kept.test_data.samples)) == 2 * N_DEFECT - 5
