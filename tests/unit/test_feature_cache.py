"""The feature cache of frozen extractors and SimpleNet's use of it (cached training = live training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from anomalib_hyperbolic.feature_cache import FeatureCache, image_keys, module_fingerprint


class CountingExtractor(nn.Module):
    """A frozen conv that counts the images it has seen."""

    def __init__(self, levels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.levels = levels
        self.images_seen = 0
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.images_seen += len(images)
        out = self.norm(self.conv(images))
        return out if self.levels == 1 else [out, out.mean(1, keepdim=True)]


def test_each_image_is_computed_once_and_hits_equal_the_live_features() -> None:
    extractor = CountingExtractor()
    cache = FeatureCache(extractor)
    images = torch.rand(4, 3, 8, 8)
    first = cache(images)
    assert extractor.images_seen == 4
    again = cache(images[[2, 0]])  # hits, in another batch order
    assert extractor.images_seen == 4
    assert torch.equal(again, first[[2, 0]])
    mixed = cache(torch.cat([images[:1], torch.rand(1, 3, 8, 8)]))  # one hit, one miss
    assert extractor.images_seen == 5
    assert torch.equal(mixed[0], first[0])
    assert torch.allclose(first, extractor(images), atol=1e-6)
    assert cache.hit_rate == pytest.approx(3 / 8)


def test_content_keys_computed_by_the_caller_find_the_same_entries() -> None:
    extractor = CountingExtractor()
    cache = FeatureCache(extractor)
    images = torch.rand(3, 3, 8, 8)
    first = cache(images)
    again = cache(images, image_keys(images))  # keys hashed once by the caller (SimpleNet's training step)
    assert extractor.images_seen == 3
    assert torch.equal(again, first)
    with pytest.raises(ValueError, match="content keys"):
        cache(images, image_keys(images[:2]))


def test_a_changed_image_or_changed_weights_is_a_miss_never_a_stale_hit() -> None:
    extractor = CountingExtractor()
    cache = FeatureCache(extractor)
    images = torch.rand(2, 3, 8, 8)
    cache(images)
    cache(images + 1e-6)  # a pixel changed (augmentation, another normalisation): recomputed
    assert extractor.images_seen == 4
    with torch.no_grad():
        extractor.conv.weight.add_(1.0)
    before = module_fingerprint(extractor)
    cache.clear()  # models clear at the start of each fit: the fingerprint is taken again
    assert torch.allclose(cache(images), extractor(images), atol=1e-6)
    assert module_fingerprint(extractor) == before
    assert image_keys(images) != image_keys(images.double())  # dtype is part of the key


def test_an_extractor_with_batch_norm_in_training_mode_is_never_cached() -> None:
    extractor = CountingExtractor().train()
    cache = FeatureCache(extractor)
    images = torch.rand(2, 3, 8, 8)
    cache(images)
    cache(images)
    assert extractor.images_seen == 4
    assert cache.lookups == 0


def test_list_outputs_and_disk_spill(tmp_path: Path) -> None:
    extractor = CountingExtractor(levels=2)
    cache = FeatureCache(extractor, max_megabytes=0, directory=tmp_path)  # nothing fits in memory
    images = torch.rand(3, 3, 8, 8)
    first = cache(images)
    assert len(list(tmp_path.rglob("*.pt"))) == 3
    second = FeatureCache(extractor, max_megabytes=0, directory=tmp_path)(images)  # a new cache reads the files
    assert extractor.images_seen == 3
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_inputs_that_change_every_epoch_switch_the_cache_off() -> None:
    extractor = CountingExtractor()
    cache = FeatureCache(extractor)
    for _ in range(2):
        cache(torch.rand(4, 3, 8, 8))  # augmented: never the same image twice
        cache.end_epoch()
    assert not cache.enabled
    assert not cache.entries


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_megabytes"):
        FeatureCache(CountingExtractor(), max_megabytes=-1)
    with pytest.raises(ValueError, match="min_hit_rate"):
        FeatureCache(CountingExtractor(), min_hit_rate=2)


def test_synthetic_pool_draws_variants_once_and_distinct_copies() -> None:
    from anomalib_hyperbolic.models.simplenet.synthetic_defects import SyntheticDefects, SyntheticFeaturePool

    torch.manual_seed(0)
    defects = SyntheticDefects(copies=2, coverage=0.0, per_head=True)
    pool = SyntheticFeaturePool(defects, size=3, refresh_epochs=2)
    extractor = CountingExtractor()
    images = torch.rand(2, 3, 32, 32)
    keys = image_keys(images)
    rows = pool.anomalous_features(images, keys, heads=2, extract=extractor)
    assert extractor.images_seen == 6  # 3 variants of 2 images
    assert len(rows) == 2
    assert all(part.shape[-1] == 4 for part in rows)
    pool.anomalous_features(images, keys, heads=2, extract=extractor)
    assert extractor.images_seen == 6  # reused
    pool.end_epoch()
    pool.end_epoch()  # refresh after 2 epochs
    pool.anomalous_features(images, keys, heads=2, extract=extractor)
    assert extractor.images_seen == 12
    with pytest.raises(ValueError, match="synthetic_pool_size"):
        SyntheticFeaturePool(defects, size=1)
    with pytest.raises(ValueError, match="synthetic_pool_refresh"):
        SyntheticFeaturePool(defects, size=2, refresh_epochs=-1)


@pytest.mark.parametrize("variant", ["paper", "per_head"])
def test_simplenet_trains_the_same_with_and_without_the_cache(variant: str, tmp_path: Path) -> None:
    """Seeded two-epoch runs: every figure of the cached run equals the live run's to 1e-4."""
    from tests.unit.test_simplenet_regression import VARIANTS, run_variant

    cached = run_variant({**VARIANTS[variant], "cache_features": True}, tmp_path / "cached")
    live = run_variant({**VARIANTS[variant], "cache_features": False}, tmp_path / "live")
    for key, value in live.items():
        assert cached[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key


def test_simplenet_cache_is_used_from_the_second_epoch(tmp_path: Path) -> None:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_hyperbolic.models import SimpleNet
    from anomalib_hyperbolic.testing import make_mvtec_like_dataset
    from tests.unit.test_simplenet_regression import TINY

    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=1, n_test_defect=1, image_size=64)
    datamodule = MVTecAD(root=root, category="synthetic", train_batch_size=2, eval_batch_size=2, num_workers=0)
    module = SimpleNet(**TINY, pre_processor=SimpleNet.configure_pre_processor((64, 64)))
    engine = Engine(max_epochs=3, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path / "run")
    engine.fit(model=module, datamodule=datamodule)
    assert module.feature_cache is not None
    assert module.feature_cache.lookups == 12
    assert module.feature_cache.hits == 8  # epochs 2 and 3
