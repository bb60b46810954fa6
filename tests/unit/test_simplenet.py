"""Unit tests of SimpleNet (tiny, CPU, offline: random-init resnet18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalib_hyperbolic.models import SimpleNet
from anomalib_hyperbolic.models.simplenet import SimpleNetModel, TruncatedL1Loss
from anomalib_hyperbolic.models.simplenet.torch_model import AdaptiveAvgPoolChannels, SimpleNetFeatureExtractor

TINY = {
    "backbone": "resnet18",
    "layers": ["layer2", "layer3"],
    "pre_trained": False,
    "pretrain_embed_dim": 32,
    "target_embed_dim": 32,
    "discriminator_hidden": 16,
}


def tiny_model(**overrides) -> SimpleNetModel:
    torch.manual_seed(0)
    return SimpleNetModel(**{**TINY, **overrides})


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize(
    ("distance", "discriminator_input"), [("euclidean", "logmap"), ("poincare", "logmap"), ("poincare", "distance")]
)
def test_shapes_train_and_eval(distance, discriminator_input):
    model = tiny_model(distance=distance, discriminator_input=discriminator_input)
    images = torch.randn(2, 3, 64, 64)
    model.train()
    normal, anomalous = model(images)
    assert normal.shape == anomalous.shape == (2, 8, 8)  # layer2 grid of resnet18 at 64 px
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert out.pred_score.shape == (2,)
    assert out.anomaly_map.shape == (2, 1, 64, 64)
    assert torch.isfinite(out.anomaly_map).all()


def test_feature_extractor_matches_unfold_pool_resize_reference():
    """Eqs. (1)-(4) equal the official order: unfold p x p, resize, adaptive pool per level, pool the stack."""
    torch.manual_seed(0)
    extractor = SimpleNetFeatureExtractor("resnet18", ["layer2", "layer3"], False, 3, 48, 40)
    images = torch.randn(1, 3, 64, 64)
    ours = extractor(images)
    with torch.no_grad():
        levels = extractor.feature_extractor(images)
    size = levels["layer2"].shape[-2:]
    pooled = []
    for name in ("layer2", "layer3"):
        level = levels[name]
        unfolded = F.unfold(level, kernel_size=3, padding=1)  # (B, C*9, H*W)
        unfolded = unfolded.reshape(1, -1, *level.shape[-2:])
        unfolded = F.interpolate(unfolded, size=size, mode="bilinear", align_corners=False)
        per_location = unfolded.flatten(2).transpose(1, 2).reshape(-1, 1, unfolded.shape[1])
        pooled.append(F.adaptive_avg_pool1d(per_location, 48).squeeze(1))
    stacked = torch.stack(pooled, dim=1).reshape(-1, 1, 96)
    reference = F.adaptive_avg_pool1d(stacked, 40).reshape(1, *size, 40).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("c_in", "c_out"), [(360, 1536), (4608, 1536), (100, 7), (6, 6)])
def test_adaptive_pool_channels_equals_torch(c_in, c_out):
    x = torch.randn(2, c_in, 3, 4)
    reference = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(-1, 1, c_in), c_out)
    reference = reference.reshape(2, 3, 4, c_out).permute(0, 3, 1, 2)
    torch.testing.assert_close(AdaptiveAvgPoolChannels(c_in, c_out)(x), reference)


def test_adaptor_and_discriminator_structure():
    model = tiny_model()
    assert model.adaptor.bias is None
    assert model.adaptor.in_features == model.adaptor.out_features == 32
    layers = [type(m).__name__ for m in model.discriminator.modules()]
    assert layers[1:] == ["Linear", "Sequential", "BatchNorm1d", "LeakyReLU", "Linear"]
    assert model.discriminator.body[1].negative_slope == 0.2


# -------------------------------------------------------------------------------------------- loss
def test_truncated_l1_values_by_hand():
    loss = TruncatedL1Loss()
    normal = torch.tensor([1.0, 0.5, 0.0, -1.0])  # max(0, 0.5 - D): 0, 0, 0.5, 1.5 -> mean 0.5
    anomalous = torch.tensor([-1.0, -0.5, 0.0, 1.0])  # max(0, D + 0.5): 0, 0, 0.5, 1.5 -> mean 0.5
    assert loss(normal, anomalous).item() == pytest.approx(1.0)
    # Beyond the margins the loss is exactly zero (truncation), and gradients vanish.
    normal = torch.tensor([0.7, 2.0], requires_grad=True)
    anomalous = torch.tensor([-0.6, -3.0], requires_grad=True)
    value = loss(normal, anomalous)
    value.backward()
    assert value.item() == 0.0
    assert normal.grad.abs().sum() == 0
    assert anomalous.grad.abs().sum() == 0
    # Custom margins.
    assert TruncatedL1Loss(th_pos=1.0, th_neg=0.0)(torch.tensor([0.0]), torch.tensor([0.25])).item() == pytest.approx(
        1.25
    )


def test_truncated_l1_gradient_signs():
    loss = TruncatedL1Loss()
    normal = torch.zeros(3, requires_grad=True)
    anomalous = torch.zeros(3, requires_grad=True)
    loss(normal, anomalous).backward()
    assert (normal.grad < 0).all()  # push normal scores up
    assert (anomalous.grad > 0).all()  # push anomalous scores down


# ------------------------------------------------------------------------------------------- noise
@pytest.mark.parametrize("distance", ["euclidean", "poincare"])
def test_noise_only_in_training(distance):
    model = tiny_model(distance=distance)
    images = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        first, second = model(images), model(images)
    torch.testing.assert_close(first.anomaly_map, second.anomaly_map, rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    normal, anomalous = model(images)
    assert not torch.allclose(normal, anomalous)


def test_euclidean_noise_statistics():
    model = tiny_model(noise_std=0.05)
    points = torch.zeros(200, 32)
    noise = model.generate_anomalous(points) - points
    assert noise.std().item() == pytest.approx(0.05, rel=0.1)
    assert noise.mean().abs().item() < 0.01


@pytest.mark.parametrize("distance", ["euclidean", "poincare"])
def test_relative_noise_follows_feature_scale(distance):
    """sigma is relative to each feature's RMS entry: Euclidean std, or geodesic step 2 ||eps|| on the ball."""
    from anomalib_hyperbolic.geometry import poincare_distance

    model = tiny_model(noise_std=0.1, relative_noise=True, distance=distance, curvature=1e-4)
    for scale in (1.0, 10.0):
        adapted = torch.randn(400, 32) * scale
        points = model.to_manifold(adapted)
        torch.manual_seed(0)
        anomalous = model.generate_anomalous(points)
        if distance == "euclidean":
            assert (anomalous - points).std().item() == pytest.approx(0.1 * scale, rel=0.15)
        else:
            step = poincare_distance(points, anomalous, 1e-4) / 2  # = ||eps||, eps ~ N(0, (0.1 rms)^2 I)
            rms = adapted.pow(2).mean(-1).sqrt()
            assert (step / (0.1 * rms)).pow(2).mean().item() == pytest.approx(32, rel=0.15)


def test_poincare_noise_is_wrapped_normal():
    """Anomalous points stay on the ball at geodesic distance 2 ||eps|| whatever the position."""
    from anomalib_hyperbolic.geometry import expmap0, poincare_distance

    model = tiny_model(distance="poincare", curvature=0.5, noise_std=0.01)
    torch.manual_seed(0)
    for scale in (0.0, 1.0, 3.0):
        points = expmap0(torch.randn(64, 32) * scale / 32**0.5, 0.5)
        torch.manual_seed(1)
        anomalous = model.generate_anomalous(points)
        torch.manual_seed(1)
        eps = torch.randn_like(points) * 0.01
        assert (0.5 * anomalous.pow(2).sum(-1) < 1).all()
        torch.testing.assert_close(
            poincare_distance(points, anomalous, 0.5), 2 * eps.norm(dim=-1), rtol=2e-3, atol=1e-5
        )


def test_poincare_discriminator_sees_log_mapped_normals():
    """With logmap input, normal features reach the discriminator unchanged (log_0 exp_0 = id)."""
    model = tiny_model(distance="poincare", curvature=0.01)
    adapted = torch.randn(5, 32) * 0.3
    points = model.to_manifold(adapted)
    from anomalib_hyperbolic.geometry import logmap0

    torch.testing.assert_close(logmap0(points, 0.01), adapted, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_std": 0.0}, "noise_std"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"patch_size": 2}, "patch_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"curvature": -0.1, "distance": "poincare"}, "curvature"),
        ({"curvature": -0.1}, "curvature"),
        ({"curvature": 0.0, "distance": "poincare"}, "curvature"),
        ({"distance": "hyperbolic"}, "distance"),
        ({"discriminator_input": "x"}, "discriminator_input"),
        ({"image_score": "mean"}, "image_score"),
        ({"target_embed_dim": 0}, "target_embed_dim"),
        ({"blur_sigma": 0}, "blur_sigma"),
        ({"ensemble_size": 0}, "ensemble_size"),
        ({"ensemble_size": 2.0}, "ensemble_size"),
        ({"ensemble_size": True}, "ensemble_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimpleNetModel(**{**TINY, **kwargs})


def test_unknown_layer_lists_valid_ones():
    with pytest.raises(ValueError, match=r"layer9.*valid layers.*layer2"):
        SimpleNetModel(**{**TINY, "layers": ["layer2", "layer9"]})


def test_bad_loss_and_optimiser_arguments():
    with pytest.raises(ValueError, match="th_pos"):
        TruncatedL1Loss(th_pos=-1)
    with pytest.raises(ValueError, match="adaptor_lr"):
        SimpleNet(**TINY, adaptor_lr=-1.0)


def test_lightning_defaults_are_paper_values():
    model = SimpleNet(**TINY)
    assert model.loss.th_pos == model.loss.th_neg == 0.5
    assert model.model.noise_std == 0.015
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert [group["lr"] for group in optimizer.param_groups] == [1e-4, 2e-4]
    assert all(group["weight_decay"] == 1e-5 for group in optimizer.param_groups)
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(SimpleNet).parameters.items()}
    assert defaults["backbone"] == "wide_resnet50_2"
    assert tuple(defaults["layers"]) == ("layer2", "layer3")
    assert defaults["patch_size"] == 3
    assert defaults["target_embed_dim"] == 1536
    assert defaults["curvature"] == 0.01


def test_registered_with_anomalib():
    from anomalib.models import get_model

    assert isinstance(get_model("SimpleNet", **TINY), SimpleNet)


# ------------------------------------------------------------------------------------------ export
class _Outputs(torch.nn.Module):
    """Expose ``(pred_score, anomaly_map)`` as a plain tuple for the exporters."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out.pred_score, out.anomaly_map


def _run_openvino(model_or_path, images):
    import openvino as ov

    converted = (
        ov.convert_model(model_or_path, example_input=images)
        if isinstance(model_or_path, torch.nn.Module)
        else ov.convert_model(model_or_path)
    )
    # This CPU has bf16 units: OpenVINO would otherwise run in bf16 by default.
    compiled = ov.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(images.numpy())
    return result[0], result[1]


def _fitted(model: SimpleNetModel) -> SimpleNetModel:
    """Fit the standardisation statistics (when enabled) on shifted, scaled random images."""
    if model.feature_standardization:
        torch.manual_seed(1)
        model.fit_feature_statistics(torch.randn(2, 3, 64, 64) * 2 + 1 for _ in range(2))
    return model.eval()


@pytest.mark.parametrize(("distance", "standardize"), [("euclidean", False), ("poincare", False), ("euclidean", True)])
def test_onnx_export_matches_torch(tmp_path, distance, standardize):
    """Dynamo ONNX export; the ONNX file is run with OpenVINO (no onnxruntime in the environment)."""
    pytest.importorskip("openvino")
    model = _fitted(tiny_model(distance=distance, feature_standardization=standardize))
    images = torch.randn(1, 3, 64, 64)
    path = tmp_path / "simplenet.onnx"
    torch.onnx.export(_Outputs(model), (images,), str(path), input_names=["image"], dynamo=True)
    score, amap = _run_openvino(str(path), images)
    with torch.no_grad():
        ref = model(images)
    np.testing.assert_allclose(score, ref.pred_score.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(amap, ref.anomaly_map.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("distance", "discriminator_input", "standardize"),
    [
        ("euclidean", "logmap", False),
        ("poincare", "logmap", False),
        ("poincare", "distance", False),
        ("poincare", "logmap", True),
    ],
)
def test_openvino_export_matches_torch(distance, discriminator_input, standardize):
    pytest.importorskip("openvino")
    model = tiny_model(distance=distance, discriminator_input=discriminator_input, feature_standardization=standardize)
    model = _fitted(model)
    images = torch.randn(1, 3, 64, 64)
    score, amap = _run_openvino(_Outputs(model), images)
    with torch.no_grad():
        ref = model(images)
    np.testing.assert_allclose(score, ref.pred_score.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(amap, ref.anomaly_map.numpy(), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------- feature standardisation
def test_feature_standardization_buffers_only_when_enabled():
    buffers = {"feature_mean", "feature_std", "feature_statistics_fitted"}
    assert not buffers & set(tiny_model().state_dict())
    assert buffers <= set(tiny_model(feature_standardization=True).state_dict())


def test_fitted_statistics_standardise_the_fitting_features():
    """After fitting, every channel of ``o`` over the fitting images has mean 0 and std 1."""
    model = tiny_model(feature_standardization=True).eval()
    torch.manual_seed(0)
    batches = [torch.randn(3, 3, 64, 64) * 3 + 2 for _ in range(3)]
    model.fit_feature_statistics(iter(batches))
    assert bool(model.feature_statistics_fitted)
    with torch.no_grad():
        raw = model.feature_extractor(torch.cat(batches)).permute(0, 2, 3, 1).reshape(-1, 32)
        standardized = model.extracted_features(torch.cat(batches)).reshape(-1, 32)
    assert not torch.allclose(raw.mean(0), torch.zeros(32), atol=1e-2)  # the test means something
    torch.testing.assert_close(standardized.mean(0), torch.zeros(32), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardized.std(0, unbiased=False), torch.ones(32), atol=1e-3, rtol=0)


def test_constant_channel_std_is_floored():
    """A channel that never varies gets a floored std, not a division by zero."""
    model = tiny_model(feature_standardization=True).eval()
    with torch.no_grad():
        model.fit_feature_statistics([torch.zeros(2, 3, 64, 64)])  # random-init BN: constant features
        out = model(torch.randn(1, 3, 64, 64))
    assert (model.feature_std > 0).all()
    assert torch.isfinite(out.anomaly_map).all()


def test_channel_moments_match_torch_and_refuse_nothing():
    from anomalib_hyperbolic.models.components import ChannelMoments

    torch.manual_seed(0)
    batches = [torch.randn(2, 5, 3, 4) * 3 + 1, torch.randn(4, 5, 3, 4)]
    moments = ChannelMoments()
    for batch in batches:
        moments.update(batch)
    flat = torch.cat(batches).double().transpose(0, 1).flatten(1)
    mean, std = moments.compute()
    torch.testing.assert_close(mean, flat.mean(1))
    torch.testing.assert_close(std, flat.std(1, unbiased=False))
    with pytest.raises(ValueError, match="No features"):
        ChannelMoments().compute()


def test_fit_feature_statistics_errors():
    with pytest.raises(ValueError, match="no images"):
        tiny_model(feature_standardization=True).fit_feature_statistics([])
    with pytest.raises(RuntimeError, match="feature_standardization=True"):
        tiny_model().fit_feature_statistics([torch.zeros(1, 3, 64, 64)])


def _quiet_engine(root) -> object:
    from anomalib.engine import Engine

    return Engine(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, default_root_dir=root, enable_progress_bar=False
    )


def _assert_standardised(model: SimpleNetModel, images: torch.Tensor) -> None:
    """Every channel of the standardised features of ``images`` has mean 0."""
    with torch.no_grad():
        standardized = model.extracted_features(images).reshape(-1, model.feature_mean.numel())
    torch.testing.assert_close(standardized.mean(0), torch.zeros_like(standardized[0]), atol=1e-3, rtol=0)


def test_lightning_fit_fits_the_statistics_once(tmp_path):
    """``Engine.fit`` fits the statistics on the pre-processed training images; a second fit keeps them.

    Synthetic anomalies are switched on too: every training step must synthesise them.
    """
    from anomalib.data import MVTecAD

    from anomalib_hyperbolic.testing import make_mvtec_like_dataset

    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=64)
    datamodule = MVTecAD(root=root, category="synthetic", train_batch_size=2, eval_batch_size=2, num_workers=0)
    module = SimpleNet(
        **TINY, feature_standardization=True, synthetic_anomalies=True, synthetic_copies=2, synthetic_coverage=0.25
    )
    calls, coverages = [], []
    synthesize, head_training_scores = module.synthesize_anomalies, module.model.head_training_scores
    module.synthesize_anomalies = lambda images: calls.append(len(images)) or synthesize(images)
    module.model.head_training_scores = lambda *args, **kwargs: (
        coverages.append(kwargs.get("min_coverage")) or head_training_scores(*args, **kwargs)
    )
    _quiet_engine(tmp_path / "run").fit(model=module, datamodule=datamodule)
    model = module.model
    assert calls == [4, 4]  # two training batches of two images, two defective copies each
    assert coverages == [0.25, 0.25]
    del model.head_training_scores
    assert bool(model.feature_statistics_fitted)
    images = torch.cat([module.pre_processor.transform(batch.image) for batch in datamodule.train_dataloader()])
    _assert_standardised(model, images)
    fitted = model.feature_mean.clone()
    model.feature_mean.add_(1.0)  # a second fit must not overwrite fitted (e.g. loaded) statistics
    _quiet_engine(tmp_path / "run2").fit(model=module, datamodule=datamodule)
    torch.testing.assert_close(model.feature_mean, fitted + 1.0)
    # without a datamodule the statistics come from the trainer's training dataloader
    plain = SimpleNet(**TINY, feature_standardization=True)
    _quiet_engine(tmp_path / "run3").fit(
        model=plain, train_dataloaders=datamodule.train_dataloader(), val_dataloaders=datamodule.val_dataloader()
    )
    assert bool(plain.model.feature_statistics_fitted)
    _assert_standardised(plain.model, images)


# ------------------------------------------------------------------------------ synthetic anomalies
def test_training_scores_add_the_features_under_the_synthetic_masks():
    model = tiny_model().train()
    images = torch.randn(2, 3, 64, 64)
    masks = torch.zeros(2, 1, 64, 64)
    normal, anomalous = model.training_scores(images, images.clone(), masks)
    assert normal.shape == anomalous.shape == (2 * 8 * 8,)  # no mask: eq. (6) noise only
    masks[0, :, :16, :] = 1  # the first two rows of the 8 x 8 grid of image 0
    masks[1, :, :, :3] = 1  # covers 3/8 of the first grid column: less than half, not taken
    normal, anomalous = model.training_scores(images, images.clone(), masks)
    assert anomalous.shape == (2 * 8 * 8 + 2 * 8,)
    # the synthetic part holds exactly the masked cells of the synthetic images (eval: batch-independent D)
    model.eval()
    synthetic_images = images + 1.0
    _, anomalous = model.training_scores(images, synthetic_images, masks)
    expected = model.discriminate(model.to_manifold(model.adapted_features(synthetic_images)))[0, :2].flatten()
    torch.testing.assert_close(anomalous[2 * 8 * 8 :], expected)
    with pytest.raises(ValueError, match="mask"):
        model.training_scores(images, images.clone(), None)
    # a lower coverage threshold also takes the partly covered column of image 1 (3/8 > 1/4)
    model.train()
    _, anomalous = model.training_scores(images, images.clone(), masks, min_coverage=0.25)
    assert anomalous.shape == (2 * 8 * 8 + 2 * 8 + 8,)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="min_coverage"):
            model.training_scores(images, images.clone(), masks, min_coverage=bad)


def test_synthesized_anomalies_change_only_the_masked_pixels():
    """The generator sees [0, 1] pixels: the pre-processor's Normalize is undone and redone exactly."""
    torch.manual_seed(0)
    module = SimpleNet(**TINY, synthetic_anomalies=True)
    raw = torch.rand(3, 3, 64, 64)
    images = module.pre_processor.transform(raw)
    synthetic, masks = module.synthesize_anomalies(images)
    assert synthetic.shape == images.shape
    assert masks.shape == (3, 1, *images.shape[-2:])  # the pre-processor resized to 256
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.sum() > 0
    outside = (masks == 0).expand_as(images)
    torch.testing.assert_close(synthetic[outside], images[outside], atol=1e-5, rtol=0)
    assert not torch.allclose(synthetic[~outside], images[~outside])


def test_synthetic_anomaly_errors(tmp_path):
    with pytest.raises(RuntimeError, match="synthetic_anomalies=True"):
        SimpleNet(**TINY).synthesize_anomalies(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="synthetic_copies"):
        SimpleNet(**TINY, synthetic_anomalies=True, synthetic_copies=0)
    for coverage in (-0.5, 1.0):
        with pytest.raises(ValueError, match="synthetic_coverage"):
            SimpleNet(**TINY, synthetic_anomalies=True, synthetic_coverage=coverage)
    with pytest.raises(ValueError, match="synthetic_anomaly_source"):
        SimpleNet(**TINY, synthetic_anomalies=True, synthetic_anomaly_source=tmp_path / "missing")


# --------------------------------------------------------------------------------------------- fit
@pytest.mark.parametrize("distance", ["euclidean", "poincare"])
def test_tiny_fit_lowers_loss(distance):
    """A few Adam steps on synthetic normal textures lower the truncated L1 loss."""
    from anomalib_hyperbolic.testing.synthetic import textured_image

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.tensor(np.stack([textured_image(rng, 64) for _ in range(4)]), dtype=torch.float32)
    images = images.permute(0, 3, 1, 2)
    # Larger learning rates than the paper's so that 30 steps suffice on this tiny problem.
    module = SimpleNet(**TINY, distance=distance, noise_std=0.1, adaptor_lr=1e-2, discriminator_lr=2e-2)
    optimizer = module.configure_optimizers()
    module.model.train()
    losses = []
    for _ in range(30):
        normal, anomalous = module.model(images)
        loss = module.loss(normal, anomalous)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])


# ------------------------------------------------------------------------------- head ensemble
def test_ensemble_heads_are_independent_and_paper_state_dict_unchanged():
    single = tiny_model()
    assert single.ensemble_size == 1
    assert not any(key.startswith("extra_heads") for key in single.state_dict())
    assert len(single.heads()) == 1
    ensemble = tiny_model(ensemble_size=3)
    heads = ensemble.heads()
    assert len(heads) == 3
    assert heads[0] == (ensemble.adaptor, ensemble.discriminator)
    weights = [adaptor.weight for adaptor, _ in heads]
    assert not torch.equal(weights[0], weights[1])  # initialised independently
    assert not torch.equal(weights[1], weights[2])
    assert {key.split(".")[1] for key in ensemble.state_dict() if key.startswith("extra_heads")} == {"0", "1"}


@pytest.mark.parametrize("distance", ["euclidean", "poincare"])
def test_ensemble_score_is_the_mean_of_the_heads(distance):
    model = tiny_model(ensemble_size=3, distance=distance).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        extracted = model.extracted_features(images)
        per_head = [model.discriminate(model.to_manifold(a(extracted)), d) for a, d in model.heads()]
        patch_scores = -torch.stack(per_head).mean(0)
        expected_map = model.blur(F.interpolate(patch_scores.unsqueeze(1), size=(64, 64), mode="bilinear"))
    torch.testing.assert_close(out.anomaly_map, expected_map)
    torch.testing.assert_close(out.pred_score, patch_scores.flatten(1).amax(1))
    # a single head differs from the mean (the test would pass trivially if all heads were one)
    assert not torch.allclose(-per_head[0], patch_scores)


def test_ensemble_training_scores_come_head_after_head():
    model = tiny_model(ensemble_size=2).train()
    images = torch.randn(2, 3, 64, 64)
    normal, anomalous = model(images)
    assert normal.shape == anomalous.shape == (2 * 2, 8, 8)
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, :16, :] = 1  # two rows of image 0's 8 x 8 grid
    normal, anomalous = model.training_scores(images, images + 1.0, masks)
    assert normal.shape == (2 * 2 * 8 * 8,)
    assert anomalous.shape == (2 * (2 * 8 * 8 + 2 * 8),)
    model.eval()  # batch-independent discriminators: each block is its own head's scores
    normal, anomalous = model.training_scores(images, images + 1.0, masks)
    for index, (adaptor, discriminator) in enumerate(model.heads()):
        expected = model.discriminate(model.to_manifold(adaptor(model.extracted_features(images))), discriminator)
        torch.testing.assert_close(normal[index * 128 : (index + 1) * 128], expected.flatten())
        synthetic = model.to_manifold(adaptor(model.extracted_features(images + 1.0)))[0, :2]
        block = anomalous[index * 144 : (index + 1) * 144]
        torch.testing.assert_close(block[128:], model.discriminate(synthetic, discriminator).flatten())


def test_synthetic_per_head_gives_each_head_its_own_group():
    model = tiny_model(ensemble_size=2).eval()  # eval: batch-independent discriminators
    images = torch.randn(2, 3, 64, 64)
    synthetic_images = torch.cat([images + 1.0, images - 1.0])  # group 0, then group 1
    masks = torch.zeros(4, 1, 64, 64)
    masks[0, :, :16, :] = 1  # group 0: two rows of image 0's 8 x 8 grid
    masks[3, :, :8, :] = 1  # group 1: one row of image 1's grid
    normal, anomalous = model.training_scores(images, synthetic_images, masks, synthetic_per_head=True)
    assert normal.shape == (2 * 2 * 8 * 8,)
    assert anomalous.shape == (2 * 2 * 8 * 8 + 2 * 8 + 8,)
    (adaptor0, disc0), (adaptor1, disc1) = model.heads()
    own0 = model.discriminate(model.to_manifold(adaptor0(model.extracted_features(images + 1.0)))[0, :2], disc0)
    own1 = model.discriminate(model.to_manifold(adaptor1(model.extracted_features(images - 1.0)))[1, :1], disc1)
    torch.testing.assert_close(anomalous[128:144], own0.flatten())
    torch.testing.assert_close(anomalous[144 + 128 :], own1.flatten())
    # shared (the default): every head sees both groups' covered cells
    _, shared = model.training_scores(images, synthetic_images, masks)
    assert shared.shape == (2 * (2 * 8 * 8 + 2 * 8 + 8),)
    for bad in (synthetic_images[:3], None):
        with pytest.raises(ValueError, match="synthetic_per_head"):
            model.training_scores(images, bad, None if bad is None else masks[:3], synthetic_per_head=True)


def test_lightning_synthetic_per_head_makes_copies_for_every_head():
    module = SimpleNet(**TINY, ensemble_size=3, synthetic_anomalies=True, synthetic_copies=2, synthetic_per_head=True)
    seen = []
    generate = module.synthesize_anomalies

    def recording(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(images.shape[0])
        return generate(images)

    module.synthesize_anomalies = recording

    class _Batch:
        image = torch.randn(2, 3, 64, 64)

    module.model.train()
    module.log = lambda *args, **kwargs: None  # no trainer attached
    loss = module.training_step(_Batch())["loss"]
    assert seen == [3 * 2 * 2]  # heads x copies x images
    assert torch.isfinite(loss)
    for kwargs in ({"synthetic_per_head": True}, {"synthetic_anomalies": True, "synthetic_per_head": 1}):
        with pytest.raises(ValueError, match="synthetic_per_head"):
            SimpleNet(**TINY, ensemble_size=2, **kwargs)


def test_ensemble_lightning_loss_is_the_sum_and_every_head_trains():
    module = SimpleNet(**TINY, ensemble_size=2, noise_std=0.1)
    optimizer = module.configure_optimizers()
    heads = module.model.heads()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for adaptor, disc in heads for p in [*adaptor.parameters(), *disc.parameters()])
    assert [group["lr"] for group in optimizer.param_groups] == [1e-4, 2e-4]

    class _Batch:
        image = torch.randn(2, 3, 64, 64)

    module.model.train()
    module.log = lambda *args, **kwargs: None  # no trainer attached
    torch.manual_seed(3)
    loss = module.training_step(_Batch())["loss"]
    torch.manual_seed(3)
    normal, anomalous = module.model(_Batch.image)
    per_head = [module.loss(n, a) for n, a in zip(normal.view(2, -1), anomalous.view(2, -1), strict=True)]
    torch.testing.assert_close(loss, per_head[0] + per_head[1])
    before = [adaptor.weight.detach().clone() for adaptor, _ in heads]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(b, adaptor.weight) for b, (adaptor, _) in zip(before, heads, strict=True))


@pytest.mark.parametrize("standardize", [False, True])
def test_ensemble_exports_match_torch(tmp_path, standardize):
    """ONNX (dynamo) and direct OpenVINO conversion of a 3-head model, f32, against torch."""
    pytest.importorskip("openvino")
    model = _fitted(tiny_model(ensemble_size=3, feature_standardization=standardize))
    images = torch.randn(1, 3, 64, 64)
    path = tmp_path / "simplenet_ensemble.onnx"
    torch.onnx.export(_Outputs(model), (images,), str(path), input_names=["image"], dynamo=True)
    with torch.no_grad():
        ref = model(images)
    for source in (str(path), _Outputs(model)):
        score, amap = _run_openvino(source, images)
        np.testing.assert_allclose(score, ref.pred_score.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(amap, ref.anomaly_map.numpy(), atol=1e-4, rtol=1e-4)
