"""HADNet: shapes, AFSS/ARD selection, HST geometry, exportability, errors, tiny fit."""

import math

import pytest
import torch
from anomalib.data import ImageBatch
from lightning.pytorch.callbacks import Callback

from anomalib_hyperbolic.geometry import clip_features, expmap0
from anomalib_hyperbolic.models import HADNet
from anomalib_hyperbolic.models.hadnet import HADNetModel
from anomalib_hyperbolic.models.hadnet.loss import HADNetLoss
from tests.harness_cases import TINY_HADNET as TINY
from tests.harness_cases import tiny_cpu_engine, tiny_hadnet, tiny_magnetic_tile


@pytest.fixture(scope="module")
def model() -> HADNetModel:
    torch.manual_seed(0)
    return HADNetModel(**TINY).eval()


def test_shapes(model):
    images = torch.rand(2, 3, 32, 32)
    out = model(images)
    assert out.pred_score.shape == (2,)
    assert out.anomaly_map.shape == (2, 1, 32, 32)
    assert ((out.anomaly_map >= 0) & (out.anomaly_map <= 1)).all()
    model.train()
    try:
        train_out = model(images)
    finally:
        model.eval()
    assert train_out["logits"].shape == (2, 1, 32, 32)
    assert [s.shape[1] for s in train_out["selected"]] == [8, 8]
    assert [r.shape for r in train_out["reconstructions"]] == [s.shape for s in train_out["selected"]]


def test_image_normalisation_follows_the_backbone(model, tmp_path):
    """The paper's mean/std for its WideResNet-50; any other backbone its own (timm's); explicit values win."""
    from safetensors.torch import save_file

    from anomalib_hyperbolic.models.hadnet.torch_model import PAPER_MEAN, PAPER_STD, image_normalization

    assert image_normalization("wide_resnet50_2.tv_in1k") == (PAPER_MEAN, PAPER_STD)
    assert image_normalization("wide_resnet50_2") == (PAPER_MEAN, PAPER_STD)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert image_normalization("resnet18") == imagenet
    lite0 = tmp_path / "lite0.safetensors"  # metadata names the architecture
    save_file({"unused": torch.zeros(1)}, str(lite0), metadata={"architecture": "tf_efficientnet_lite0"})
    assert image_normalization(lite0) == ((0.5,) * 3, (0.5,) * 3)
    assert image_normalization(lite0, mean=(0.1, 0.2, 0.3)) == ((0.1, 0.2, 0.3), (0.5,) * 3)
    assert image_normalization("resnet18", (0.4,) * 3, (0.2,) * 3) == ((0.4,) * 3, (0.2,) * 3)
    # the buffers of the model (resnet18): ImageNet's, and an explicit mean/std reaches them
    assert model.image_mean.flatten().tolist() == pytest.approx(imagenet[0])
    assert model.image_std.flatten().tolist() == pytest.approx(imagenet[1])
    explicit = HADNet(**TINY, mean=PAPER_MEAN, std=PAPER_STD, visualizer=False)
    assert explicit.model.image_mean.flatten().tolist() == pytest.approx(PAPER_MEAN)
    lite0_model = HADNet(**{**TINY, "backbone": lite0, "layers": ("blocks.1", "blocks.2")}, visualizer=False)
    assert lite0_model.model.image_std.flatten().tolist() == [0.5] * 3


def test_afss_selects_lowest_loss_maps(model):
    # set_selection keeps the r lowest losses, sorted
    losses = [torch.arange(64, 0, -1).float(), torch.rand(128)]
    model.set_selection(losses)
    assert model.selected_0.tolist() == list(range(56, 64))
    assert model.selected_1.tolist() == sorted(torch.topk(losses[1], 8, largest=False).indices.tolist())
    assert bool(model.initialized)
    # eq. (8)-(10): the map whose squared difference equals the target has zero loss
    torch.manual_seed(0)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 1
    normal = torch.randn(2, 6, 8, 8)
    anomalous = normal + 0.05 * torch.randn(2, 6, 8, 8)
    anomalous[:, 3:4] = normal[:, 3:4] + mask
    (loss,) = model.afss_channel_losses([normal], [anomalous], target="mask", masks=mask)
    assert loss.shape == (6,)
    assert loss[3] < 1e-6
    assert loss.argmin().item() == 3


def test_afss_hyperplane_target_matches_distance(model):
    points = model.hst(model.extract(torch.rand(2, 3, 32, 32)))
    # a map whose squared difference is the (shifted) hyperplane distance has the lowest loss
    anomalous = points[0]
    distance = model.hyperplane_distance(0, anomalous)
    normal = anomalous + 0.1 * torch.rand_like(anomalous)
    normal[:, 5:6] = anomalous[:, 5:6] - (distance - distance.min()).sqrt()
    losses = model.afss_channel_losses([normal, points[1]], [anomalous, points[1]])
    assert losses[0][5] < 1e-6
    assert losses[0].argmin().item() == 5


def test_random_selection_ablation(model):
    model.set_selection([torch.zeros(64), torch.zeros(128)], mode="random", seed=1)
    first = model.selected_0.clone()
    assert len(set(first.tolist())) == 8
    model.set_selection([torch.zeros(64), torch.zeros(128)], mode="random", seed=1)
    assert torch.equal(first, model.selected_0)


def test_ard_topk_gmp_and_gap():
    model = HADNetModel(**{**TINY, "num_residuals": 2}).eval()
    gamma = torch.zeros(1, 16, 4, 4)
    gamma[0, 2, 1, 1] = 10.0  # spike: largest max, small mean
    gamma[0, 5] = 2.0  # plateau: largest mean
    gamma[0, 7, 0, 0] = 4.0  # second largest max
    selected = model.ard(gamma)
    assert selected.shape == (1, 2, 4, 4)
    assert torch.equal(selected[0, 0], gamma[0, 2])
    assert torch.equal(selected[0, 1], gamma[0, 5])
    everything = HADNetModel(**{**TINY, "residual_selection": "all"}).eval()
    assert everything.ard(gamma).shape == gamma.shape
    assert everything.discriminator.body[0].in_channels == 16


def test_hyperbolic_vs_euclidean(model):
    features = model.extract(torch.rand(2, 3, 32, 32))
    flat = HADNetModel(**{**TINY, "rho": 0.0}).eval()
    curved = HADNetModel(**{**TINY, "rho": 0.5}).eval()
    flat_points = flat.hst(features)
    curved_points = curved.hst(features)
    tangent = (features[0] - flat.feature_mean_0) / flat.feature_std_0 / math.sqrt(features[0].shape[1])
    assert torch.allclose(flat_points[0], clip_features(tangent, 2.3, dim=1))
    assert torch.allclose(curved_points[0], expmap0(clip_features(tangent, 2.3, dim=1), 0.5, dim=1))
    # expmap0 compresses norms: inside the ball of radius 1/sqrt(rho), never longer than Euclidean
    curved_norm = curved_points[0].norm(dim=1)
    assert (curved_norm < 1 / math.sqrt(0.5)).all()
    assert (curved_norm <= flat_points[0].norm(dim=1) + 1e-6).all()
    assert not torch.allclose(curved_points[0], flat_points[0])
    tiny = HADNetModel(**{**TINY, "rho": 1e-8}).eval()
    assert torch.allclose(tiny.hst(features)[0], flat_points[0], atol=1e-5)


def test_selection_is_buffer_and_export(model, tmp_path):
    model.set_selection([torch.arange(64).float(), torch.arange(128).float()])
    state = model.state_dict()
    assert "selected_0" in state
    assert "feature_mean_1" in state
    images = torch.rand(1, 3, 32, 32)
    expected = model(images)
    exported = torch.export.export(model, (images,), strict=False)
    got = exported.module()(images)
    assert torch.allclose(got[0], expected.pred_score, atol=1e-5)
    assert torch.allclose(got[2], expected.anomaly_map, atol=1e-5)
    graph_ops = {str(node.target) for node in exported.graph.nodes}
    assert any("index_select" in op for op in graph_ops)
    assert any("topk" in op for op in graph_ops)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_selected": (65, 8)}, r"num_selected.*layer1.*64 channels"),
        ({"num_selected": (8,)}, "one value per layer"),
        ({"num_selected": 0}, "num_selected"),
        ({"num_residuals": 7}, "even"),
        ({"num_residuals": 18}, "exceeds the 16"),
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": True}, "Curvature `rho`.*boolean"),
        ({"residual_selection": "some"}, "residual_selection"),
        ({"layers": ("layer9",)}, "valid layers"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HADNetModel(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"selection": "best"}, "selection"),
        ({"training_mode": "semi"}, "training_mode"),
        ({"afss_target": "x"}, "afss_target"),
        ({"color_jitter_p": 2.0}, "color_jitter_p"),
        ({"rho": -1.0}, "rho"),
    ],
)
def test_bad_lightning_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HADNet(**{**TINY, **kwargs})


def _square_batch(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    normal = 0.5 + 0.05 * torch.randn(n, 3, size, size, generator=generator)
    mask = torch.zeros(n, 1, size, size)
    for i in range(n):
        y, x = 4 + 5 * i % 16, 6 + 3 * i % 16
        mask[i, :, y : y + 8, x : x + 8] = 1
    anomalous = torch.where(mask.bool(), torch.rand(n, 3, size, size, generator=generator), normal)
    return normal.clamp(0, 1), anomalous.clamp(0, 1), mask


def test_tiny_fit_lowers_loss():
    torch.manual_seed(0)
    model = HADNetModel(**TINY).train()
    loss_fn = HADNetLoss()
    normal, anomalous, mask = _square_batch()
    params = list(model.reconstructors.parameters()) + list(model.discriminator.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(15):
        selected, _ = model.forward_features(anomalous)
        out = model.head(selected, anomalous.shape[-2:])
        with torch.no_grad():
            targets, _ = model.forward_features(normal)
        loss = loss_fn(out["logits"], mask, out["reconstructions"], targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def _batches(supervised: bool) -> list[ImageBatch]:
    normal, anomalous, mask = _square_batch()
    if supervised:
        return [ImageBatch(image=anomalous, gt_mask=mask[:, 0].bool(), gt_label=torch.ones(4, dtype=torch.long))]
    return [ImageBatch(image=normal)]


@pytest.mark.parametrize("mode", ["unsupervised", "supervised"])
def test_lightning_initialisation_and_step(mode):
    torch.manual_seed(0)
    module = HADNet(**TINY, training_mode=mode, init_batches=2, hst_steps=2)
    before = module.model.selected_0.clone()
    module.initialize(_batches(mode == "supervised"))
    assert bool(module.model.initialized)
    assert not torch.equal(before, module.model.selected_0) or module.model.selected_0.numel() == 8
    assert module.model.feature_std_0.min() > 0
    module.model.train()
    out = module.training_step(_batches(mode == "supervised")[0], 0)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()


def test_supervised_needs_masks():
    module = HADNet(**TINY, training_mode="supervised")
    with pytest.raises(ValueError, match="gt_mask"):
        module.training_step(ImageBatch(image=torch.rand(2, 3, 32, 32)), 0)


def test_supervised_mode_on_magnetic_tile_ratio_split(tmp_path):
    """Supervised masks end to end: MagneticTile's 8:1:1 split puts masked defects in train."""
    from anomalib_hyperbolic.testing import make_magnetic_tile_like

    root = make_magnetic_tile_like(tmp_path / "mt", n_normal=4, n_per_defect=3)
    datamodule = tiny_magnetic_tile(root)
    model = tiny_hadnet(training_mode="supervised")
    engine = tiny_cpu_engine(tmp_path / "run")
    engine.fit(model, datamodule=datamodule)
    assert bool(model.model.initialized)
    metrics = engine.test(model, datamodule=datamodule, verbose=False)[0]
    assert 0 <= metrics["pixel_MIoU"] <= 1
    assert 0 <= metrics["pixel_CategoryIoU"] <= 1  # the mean over the synthetic defect types


# ---------------------------------------------------------------------------------------------- feature cache
def test_jitter_draws_exactly_as_random_apply():
    """``_jitter`` reproduces ``v2.RandomApply`` per image (same images, same stream position) and reports which."""
    module = HADNet(**TINY, color_jitter_p=0.5, visualizer=False)
    images = torch.rand(8, 3, 16, 16)
    torch.manual_seed(3)
    expected = torch.stack([module.color_jitter(image) for image in images])
    expected_next = torch.rand(1)
    torch.manual_seed(3)
    jittered_images, jittered = module._jitter(images)
    assert torch.equal(jittered_images, expected)
    assert torch.equal(torch.rand(1), expected_next)  # the stream continues where RandomApply's does
    changed = (jittered_images != images).flatten(1).any(dim=1)
    assert torch.equal(jittered, changed)
    assert 0 < int(jittered.sum()) < len(images)
    for p, count in ((0.0, 0), (1.0, len(images))):
        module.color_jitter.p = p
        assert int(module._jitter(images)[1].sum()) == count


def _cache_steps(mode: str, steps: int = 2, **kwargs: object) -> HADNet:
    """A tiny initialised module run for ``steps`` training steps on one batch, its cache emptied before them."""
    torch.manual_seed(0)
    module = HADNet(**TINY, training_mode=mode, init_batches=1, hst_steps=1, visualizer=False, **kwargs)
    module.initialize(_batches(mode == "supervised"))
    module.model.train()
    assert module.feature_cache is not None
    module.feature_cache.clear()
    for _ in range(steps):
        module.training_step(_batches(mode == "supervised")[0], 0)
    return module


@pytest.mark.parametrize("mode", ["unsupervised", "supervised"])
def test_jittered_images_are_never_stored(mode):
    """color_jitter_p = 1: every training input is jittered, so no lookup, no entry, no hit."""
    cache = _cache_steps(mode, color_jitter_p=1.0).feature_cache
    assert (cache.lookups, cache.hits, len(cache.entries)) == (0, 0, 0)


def test_synthetic_anomalies_are_never_stored():
    """Unsupervised, no jitter: the normal twins are stored; synthetic anomalies never, unchanged inputs hit."""
    cache = _cache_steps("unsupervised", color_jitter_p=0.0, anomaly_probability=1.0).feature_cache
    assert len(cache.entries) == 4  # the four normal twins, not the anomalies
    assert (cache.lookups, cache.hits) == (8, 4)  # twins only: missed in step 1, hit in step 2
    cache = _cache_steps("unsupervised", steps=1, color_jitter_p=0.0, anomaly_probability=0.0).feature_cache
    assert len(cache.entries) == 4  # the Perlin generator left every input as it was: its twin's entry
    assert (cache.lookups, cache.hits) == (8, 4)


def test_supervised_plain_images_hit_from_the_second_step():
    cache = _cache_steps("supervised", color_jitter_p=0.0).feature_cache
    assert len(cache.entries) == 4
    assert (cache.lookups, cache.hits) == (8, 4)


class _CacheCounts(Callback):
    """The cache's cumulative (hits, lookups, entries) after stage 1 and after every epoch."""

    def __init__(self) -> None:
        self.after_stage_1: tuple[int, int, int] | None = None
        self.epochs: list[tuple[int, int, int]] = []

    @staticmethod
    def _counts(module: HADNet) -> tuple[int, int, int]:
        cache = module.feature_cache
        return (0, 0, 0) if cache is None else (cache.hits, cache.lookups, len(cache.entries))

    def on_train_epoch_start(self, trainer: object, pl_module: HADNet) -> None:
        if self.after_stage_1 is None:
            self.after_stage_1 = self._counts(pl_module)

    def on_train_epoch_end(self, trainer: object, pl_module: HADNet) -> None:
        self.epochs.append(self._counts(pl_module))


def _fit_magnetic_tile(root, run_dir, mode: str, cache_features: bool, epochs: int = 3):
    """Seeded tiny fit + test on a generated Magnetic Tile copy: metrics, trained state, cache counts."""
    from lightning.pytorch import seed_everything

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_everything(0, workers=True)
        datamodule = tiny_magnetic_tile(root, "ratio" if mode == "supervised" else "one_class")
        model = tiny_hadnet(training_mode=mode, init_batches=2, hst_steps=2, cache_features=cache_features)
        counts = _CacheCounts()
        engine = tiny_cpu_engine(run_dir, epochs, [counts])
        engine.fit(model, datamodule=datamodule)
        (metrics,) = engine.test(model, datamodule=datamodule, verbose=False)
    finally:
        torch.set_num_threads(threads)
    state = {name: tensor.clone() for name, tensor in model.model.state_dict().items()}
    return {name: float(value) for name, value in metrics.items()}, state, counts, model


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_cached_fit_equals_live_fit_and_hits_from_the_second_epoch(mode, tmp_path):
    """Seeded 3-epoch fits with and without the cache: same metrics and weights; the cache is hit."""
    from anomalib_hyperbolic.testing import make_magnetic_tile_like

    root = make_magnetic_tile_like(tmp_path / "mt", n_normal=6, n_per_defect=3)
    live, live_state, live_counts, _ = _fit_magnetic_tile(root, tmp_path / "live", mode, cache_features=False)
    cached, cached_state, counts, model = _fit_magnetic_tile(root, tmp_path / "cached", mode, cache_features=True)
    assert live_counts.epochs == [(0, 0, 0)] * 3
    assert set(cached) == set(live)
    for name, value in live.items():
        assert cached[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    for name, tensor in live_state.items():
        assert torch.allclose(cached_state[name].float(), tensor.float(), rtol=1e-4, atol=1e-4), name
    assert model.feature_cache.enabled
    assert counts.after_stage_1[2] > 0  # stage 1's passes over plain training images filled the cache
    previous = counts.after_stage_1
    for epoch, (hits, lookups, _) in enumerate(counts.epochs):
        epoch_hits, epoch_lookups = hits - previous[0], lookups - previous[1]
        assert 0 <= epoch_hits <= epoch_lookups
        if epoch >= 1:
            assert epoch_hits > 0, (epoch, counts.epochs)
        previous = (hits, lookups, 0)


# ---------------------------------------------------------------------------------------------- defaults, learning type
def test_constructor_defaults_are_the_defaults_module():
    """One place for the defaults: every argument's default is DEFAULTS' field of the same name."""
    import inspect

    from anomalib_hyperbolic.models.hadnet import DEFAULTS
    from anomalib_hyperbolic.models.hadnet.loss import HADNetLoss as Loss

    fields = set(DEFAULTS.__dataclass_fields__)
    lightning = {k: v.default for k, v in inspect.signature(HADNet).parameters.items()}
    assert fields - {"image_size"} <= set(lightning)  # the image size is the pre-processor's
    assert HADNet.configure_pre_processor().transform.transforms[0].size == list(DEFAULTS.image_size)
    for cls in (HADNet, HADNetModel, Loss):
        for name, parameter in inspect.signature(cls).parameters.items():
            if name in fields:
                assert parameter.default == getattr(DEFAULTS, name), (cls.__name__, name)
    # the paper's values (and RealNet's where the paper follows it) stay the defaults
    assert (DEFAULTS.rho, DEFAULTS.lr, DEFAULTS.color_jitter_p) == (0.01, 1e-3, 0.25)
    assert (DEFAULTS.num_selected, DEFAULTS.num_residuals) == ((256, 512, 512, 256), 512)


def test_learning_type_follows_the_training_mode():
    """Unsupervised: one-class (normal images only). Supervised: trained on labelled defects, so not ONE_CLASS,
    and not FEW_SHOT/ZERO_SHOT either, which anomalib's Engine.fit does not train."""
    from anomalib import LearningType

    from anomalib_hyperbolic.learning_types import SupervisedLearningType

    assert HADNet(**TINY, visualizer=False).learning_type == LearningType.ONE_CLASS
    supervised = HADNet(**TINY, training_mode="supervised", visualizer=False).learning_type
    assert supervised == SupervisedLearningType.SUPERVISED
    assert supervised not in {LearningType.ONE_CLASS, LearningType.ZERO_SHOT, LearningType.FEW_SHOT}


def test_training_forward_returns_what_the_loss_takes():
    """Training forward: logits, reconstructions and targets (the twins' selected features, or the inputs' own)."""
    torch.manual_seed(0)
    model = HADNetModel(**TINY).train()
    normal, anomalous, mask = _square_batch()
    levels, normal_levels = model.extract(anomalous), model.extract(normal)
    twin = model(anomalous, levels=levels, normal_levels=normal_levels)
    alone = model(anomalous, levels=levels)
    with torch.no_grad():
        expected_targets = model.select(model.hst(normal_levels))
    for target, expected in zip(twin["targets"], expected_targets, strict=True):
        torch.testing.assert_close(target, expected)
    for target, selected in zip(alone["targets"], alone["selected"], strict=True):
        torch.testing.assert_close(target, selected.detach())
        assert not target.requires_grad
    losses = HADNetLoss()(twin["logits"], mask, twin["reconstructions"], twin["targets"])
    assert torch.isfinite(losses["loss"])
