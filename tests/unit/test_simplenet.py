"""Unit tests of SimpleNet (tiny, CPU, offline: random-init resnet18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch

from anomalib_hyperbolic.models import SimpleNet
from anomalib_hyperbolic.models.simplenet import ExtendedSimpleNetModel, SimpleNetModel, TruncatedL1Loss, build_model
from anomalib_hyperbolic.models.simplenet.feature_extractor import AdaptiveAvgPoolChannels, SimpleNetFeatureExtractor
from anomalib_hyperbolic.models.simplenet.synthetic_defects import DefectBatch

TINY = {
    "backbone": "resnet18",
    "layers": ["layer2", "layer3"],
    "pre_trained": False,
    "pretrain_embed_dim": 32,
    "target_embed_dim": 32,
    "discriminator_hidden": 16,
}


def tiny_model(**overrides) -> SimpleNetModel:
    """The paper's model, or the extended one when an option beyond the paper is on."""
    torch.manual_seed(0)
    return build_model(**{**TINY, **overrides})


class _Batch:
    """The one field of an anomalib batch that ``training_step`` reads."""

    def __init__(self, image: torch.Tensor) -> None:
        self.image = image


def _train_step(module: SimpleNet, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """``module.training_step`` without a trainer: the loss and what it logged."""
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    module.model.train()
    return module.training_step(_Batch(images))["loss"], logged


def _batch_independent(model: SimpleNetModel) -> SimpleNetModel:
    """The model in training mode with its batch norms on running statistics: every score independent of the batch."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.eval()
    return model


class _RecordingLoss(TruncatedL1Loss):
    """The truncated L1 loss, keeping each call's normal and anomalous scores."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, normal_scores, anomalous_scores):
        self.calls.append((normal_scores.detach(), anomalous_scores.detach()))
        return super().forward(normal_scores, anomalous_scores)


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize(
    ("distance", "discriminator_input"), [("euclidean", "logmap"), ("poincare", "logmap"), ("poincare", "distance")]
)
def test_shapes_train_and_eval(distance, discriminator_input):
    module = SimpleNet(**TINY, distance=distance, discriminator_input=discriminator_input)
    module.loss = _RecordingLoss()
    images = torch.randn(2, 3, 64, 64)
    loss, _ = _train_step(module, images)
    ((normal, anomalous),) = module.loss.calls
    assert normal.shape == anomalous.shape == (2 * 8 * 8,)  # layer2 grid of resnet18 at 64 px: 8 x 8
    assert torch.isfinite(loss)
    model = module.model.eval()
    with torch.no_grad():
        out = model(images)
    assert out.pred_score.shape == (2,)
    assert out.anomaly_map.shape == (2, 1, 64, 64)
    assert torch.isfinite(out.anomaly_map).all()


def test_training_forward_returns_each_head_s_scores():
    """The torch model owns Algorithm 1: training forward -> one HeadScores per head, what the loss takes."""
    from anomalib_hyperbolic.models.simplenet import HeadScores

    model = tiny_model(ensemble_size=2).train()
    images = torch.randn(2, 3, 64, 64)
    calls = []

    def extract(batch):  # stands in for the feature cache
        calls.append(batch)
        return model.feature_extractor(batch)

    synthetic = [torch.randn(5, 32), torch.randn(3, 32)]
    heads = model(images, extract=extract, synthetic=synthetic)
    assert len(calls) == 1
    assert calls[0] is images
    assert all(isinstance(head, HeadScores) for head in heads)
    assert [(h.normal.shape, h.noisy.shape, h.synthetic.shape) for h in heads] == [
        ((128,), (128,), (5,)),
        ((128,), (128,), (3,)),
    ]
    loss = sum(TruncatedL1Loss()(head.normal, head.anomalous) for head in heads)
    loss.backward()
    assert all(p.grad is not None for adaptor, _ in model.heads() for p in adaptor.parameters())
    plain = model(images)  # the paper: the noisy features only
    assert [h.synthetic.numel() for h in plain] == [0, 0]
    assert isinstance(model.eval()(images), InferenceBatch)


def test_paper_arguments_build_the_paper_class():
    """Every option beyond the paper off: the plain SimpleNetModel, with no extension attribute."""
    assert type(tiny_model()) is SimpleNetModel
    assert type(tiny_model(curvature=1e-4, discriminator_input="distance")) is SimpleNetModel  # no effect: Euclidean
    for option in ({"relative_noise": True}, {"feature_standardization": True}, {"distance": "poincare"},
                   {"ensemble_size": 2}):  # fmt: skip
        assert type(tiny_model(**option)) is ExtendedSimpleNetModel
    assert type(SimpleNet(**TINY).model) is SimpleNetModel


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


@pytest.mark.parametrize(("c_in", "c_out"), [(360, 1536), (100, 7), (6, 6)])
def test_adaptive_pool_channels_matrix_is_the_pooling(c_in, c_out):
    pool = AdaptiveAvgPoolChannels(c_in, c_out)
    identity = torch.eye(c_in).view(c_in, c_in, 1, 1)
    torch.testing.assert_close(pool.matrix(), pool(identity)[..., 0, 0].T.double())


# ------------------------------------------------------------------------------ null-space trap
def test_null_space_warning_with_the_issue_s_lite0_example():
    """Lite0 blocks.2 + blocks.4 at 1536 dims: rank 1128 (a 408-dim null space), as measured in issue 22."""
    with pytest.warns(UserWarning, match=r"span at most 1128 of their 1536 dimensions.*408-dimensional null space"):
        extractor = SimpleNetFeatureExtractor("tf_efficientnet_lite0", ["blocks.2", "blocks.4"], False, 3, 1536, 1536)
    assert extractor.feature_rank() == 1128


def test_no_null_space_warning_for_the_benchmark_dims():
    """384 dims on the same levels (the benchmark configs): blocks.2 has 360 < 384 values, yet o has full rank."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        extractor = SimpleNetFeatureExtractor("tf_efficientnet_lite0", ["blocks.2", "blocks.4"], False, 3, 384, 384)
    assert extractor.feature_rank() == 384


def test_feature_rank_bounds_the_rank_of_real_features():
    """p = 1: layer2's 128 channels pooled up to 256 and kept at 512 dims: the features span 128 + 256 = 384."""
    with pytest.warns(UserWarning, match="span at most 384 of their 512"):
        model = tiny_model(patch_size=1, pretrain_embed_dim=256, target_embed_dim=512)
    extractor = model.feature_extractor
    assert extractor.feature_rank() == 384
    with torch.no_grad():
        features = model.features(torch.randn(12, 3, 64, 64)).reshape(-1, 512)  # 768 locations
        # the linear part after the backbone on random level values (same grid, no resize) attains the bound
        levels = [torch.randn(2, c, 24, 24) for c in extractor.feature_extractor.out_dims]
        pooled = [
            pool(extractor.neighbourhoods(level)) for pool, level in zip(extractor.level_pools, levels, strict=True)
        ]
        linear = extractor.merge_pool(torch.cat(pooled, dim=1)).permute(0, 2, 3, 1).reshape(-1, 512)
    assert int(torch.linalg.matrix_rank(features.double())) <= 384  # (dead ReLU channels can lower it further)
    assert int(torch.linalg.matrix_rank(linear.double())) == 384


def test_adaptor_and_discriminator_structure():
    model = tiny_model()
    assert model.heads() == [(model.adaptor, model.discriminator)]
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


def test_margin_shares_by_hand():
    """p_true counts D(q) >= th+, p_fake counts D(q-) < -th- (the official code's comparisons)."""
    normal, anomalous = TruncatedL1Loss().on_margin(torch.tensor([0.4, 0.5, 2.0]), torch.tensor([-0.5, -0.6, 1.0]))
    assert normal.tolist() == [False, True, True]
    assert anomalous.tolist() == [False, True, False]


def test_training_step_logs_p_true_p_fake_and_p_synthetic():
    """Shares over every head's features: normal ones on the right of th+, noisy and synthetic ones left of -th-."""
    module = SimpleNet(**TINY, ensemble_size=2, synthetic_anomalies=True, synthetic_copies=2)
    _controlled_defects(module)
    module.loss = _RecordingLoss()
    _, logged = _train_step(module, torch.randn(2, 3, 64, 64))
    assert set(logged) == {"train_loss", "p_true", "p_fake", "p_synthetic"}
    normal = torch.cat([n for n, _ in module.loss.calls])
    noise = torch.cat([a[:128] for _, a in module.loss.calls])
    synthetic = torch.cat([a[128:] for _, a in module.loss.calls])
    assert logged["p_true"] == pytest.approx(float((normal >= 0.5).float().mean()))
    assert logged["p_fake"] == pytest.approx(float((noise < -0.5).float().mean()))
    assert logged["p_synthetic"] == pytest.approx(float((synthetic < -0.5).float().mean()))
    _, logged = _train_step(SimpleNet(**TINY), torch.randn(2, 3, 64, 64))
    assert set(logged) == {"train_loss", "p_true", "p_fake"}  # no synthetic defects: no p_synthetic


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
    """Inference draws no noise (the same maps twice); eq. (6) moves every feature."""
    model = tiny_model(distance=distance)
    images = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        first, second = model(images), model(images)
        adapted = model.adaptor(model.features(images))
    torch.testing.assert_close(first.anomaly_map, second.anomaly_map, rtol=0, atol=0)
    assert (model.anomalous(adapted) != adapted).all(-1).all()


def test_euclidean_noise_statistics():
    model = tiny_model(noise_std=0.05)
    points = torch.zeros(200, 32)
    noise = model.anomalous(points) - points
    assert noise.std().item() == pytest.approx(0.05, rel=0.1)
    assert noise.mean().abs().item() < 0.01


@pytest.mark.parametrize("distance", ["euclidean", "poincare"])
def test_relative_noise_follows_feature_scale(distance):
    """sigma is relative to each feature's RMS entry: Euclidean std, or geodesic step 2 ||eps|| on the ball."""
    from anomalib_hyperbolic.geometry import expmap0, poincare_distance

    model = tiny_model(noise_std=0.1, relative_noise=True, distance=distance, curvature=1e-4)
    for scale in (1.0, 10.0):
        adapted = torch.randn(400, 32) * scale
        points = adapted if distance == "euclidean" else expmap0(adapted, 1e-4)
        torch.manual_seed(0)
        anomalous = model.anomalous(points)
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
        anomalous = model.anomalous(points)
        torch.manual_seed(1)
        eps = torch.randn_like(points) * 0.01
        assert (0.5 * anomalous.pow(2).sum(-1) < 1).all()
        torch.testing.assert_close(
            poincare_distance(points, anomalous, 0.5), 2 * eps.norm(dim=-1), rtol=2e-3, atol=1e-5
        )


def test_poincare_discriminator_sees_log_mapped_normals():
    """The head maps onto the ball; with logmap input, normal features reach D's first layer unchanged."""
    from anomalib_hyperbolic.geometry import expmap0

    model = tiny_model(distance="poincare", curvature=0.01)
    features = torch.randn(5, 32) * 0.3
    points = model.adaptor(features)
    linear = F.linear(features, model.adaptor.weight)
    torch.testing.assert_close(points, expmap0(linear, 0.01))
    torch.testing.assert_close(
        model.discriminator.project(points), model.discriminator.input_layer(linear), atol=1e-5, rtol=1e-4
    )


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
        build_model(**{**TINY, **kwargs})
    with pytest.raises(ValueError, match=match):
        SimpleNet(**{**TINY, **kwargs})


def test_unknown_layer_lists_valid_ones():
    with pytest.raises(ValueError, match=r"layer9.*valid layers.*layer2"):
        SimpleNetModel(**{**TINY, "layers": ["layer2", "layer9"]})


def test_bad_loss_and_optimiser_arguments():
    with pytest.raises(ValueError, match="th_pos"):
        TruncatedL1Loss(th_pos=-1)
    with pytest.raises(ValueError, match="adaptor_lr"):
        SimpleNet(**TINY, adaptor_lr=-1.0)


def test_lightning_defaults_are_the_official_values():
    """Paper values, and where the official code differs in a way that matters, the official code's."""
    import inspect

    from anomalib_hyperbolic.models.simplenet import DEFAULTS

    model = SimpleNet(**TINY)
    assert model.loss.th_pos == model.loss.th_neg == 0.5
    assert model.model.noise_std == 0.015
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    adaptor, discriminator = optimizer.param_groups
    assert (adaptor["lr"], adaptor["weight_decay"], adaptor["decoupled_weight_decay"]) == (1e-4, 0.01, True)  # AdamW
    assert (discriminator["lr"], discriminator["weight_decay"]) == (2e-4, 1e-5)
    assert not discriminator.get("decoupled_weight_decay", False)  # Adam's L2 decay, as the official code
    defaults = {k: v.default for k, v in inspect.signature(SimpleNet).parameters.items()}
    assert defaults["backbone"] == "wide_resnet50_2.tv_in1k"  # torchvision V1 weights: sigma is calibrated to them
    assert tuple(defaults["layers"]) == ("layer2", "layer3")
    assert defaults["patch_size"] == 3
    assert defaults["target_embed_dim"] == 1536
    assert defaults["curvature"] == 0.01
    assert defaults["adaptor_optimizer"] == "adamw"
    # one place for the defaults: every argument's default is DEFAULTS' field of the same name
    for name, value in defaults.items():
        if hasattr(DEFAULTS, name):
            assert value == getattr(DEFAULTS, name), name
    assert {name for name in defaults if hasattr(DEFAULTS, name)} == set(DEFAULTS.__dataclass_fields__)


def test_backbone_tag_selects_the_torchvision_weights():
    """timm resolves the tag (no weights loaded offline): the default's architecture is WideResNet-50-2."""
    import timm

    from anomalib_hyperbolic.backbones import resolve_backbone

    assert resolve_backbone("wide_resnet50_2.tv_in1k").arch == "wide_resnet50_2.tv_in1k"
    assert timm.models.get_pretrained_cfg("wide_resnet50_2.tv_in1k").hf_hub_id == "timm/wide_resnet50_2.tv_in1k"
    model = SimpleNet(**{**TINY, "backbone": "resnet18.tv_in1k"})
    assert model.model.feature_extractor.feature_extractor.out_dims == [128, 256]


def test_default_pre_processor_normalises_with_the_backbone_s_statistics(tmp_path):
    """ImageNet statistics for the default WideResNet-50 (timm's config), 0.5/0.5 for an EfficientNet-Lite0 file."""
    from safetensors.torch import save_file

    from anomalib_hyperbolic.models.components import pre_processor_normalization

    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert pre_processor_normalization(SimpleNet.configure_pre_processor()) == imagenet
    assert pre_processor_normalization(SimpleNet.configure_pre_processor(backbone="tf_efficientnet_lite0")) == (
        [0.5] * 3,
        [0.5] * 3,
    )
    assert pre_processor_normalization(SimpleNet(**TINY).pre_processor) == imagenet
    lite0 = tmp_path / "lite0.safetensors"  # metadata names the architecture; pre_trained=False loads nothing
    save_file({"unused": torch.zeros(1)}, str(lite0), metadata={"architecture": "tf_efficientnet_lite0"})
    model = SimpleNet(**{**TINY, "backbone": lite0, "layers": ["blocks.2", "blocks.4"]})
    assert pre_processor_normalization(model.pre_processor) == ([0.5] * 3, [0.5] * 3)
    assert model.pre_processor.transform.transforms[0].size == [256, 256]
    explicit = SimpleNet.configure_pre_processor((64, 64))
    model = SimpleNet(**{**TINY, "backbone": lite0, "layers": ["blocks.2"]}, pre_processor=explicit)
    assert model.pre_processor is explicit  # an explicit pre-processor wins


def test_adaptor_adamw_steps_exactly_as_torch_adamw():
    """The adaptor group takes AdamW's decoupled decay; "adam" restores the paper's L2 decay on both groups."""
    module = SimpleNet(**TINY, adaptor_lr=1e-2)
    optimizer = module.configure_optimizers()
    weight = module.model.adaptor.weight
    twin = torch.nn.Parameter(weight.detach().clone())
    reference = torch.optim.AdamW([twin], lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        gradient = torch.randn_like(weight)
        weight.grad, twin.grad = gradient.clone(), gradient.clone()
        optimizer.step()
        reference.step()
    torch.testing.assert_close(weight.detach(), twin.detach(), rtol=0, atol=0)
    paper = SimpleNet(**TINY, adaptor_optimizer="adam").configure_optimizers()
    assert [g["weight_decay"] for g in paper.param_groups] == [1e-5, 1e-5]
    assert not any(g.get("decoupled_weight_decay", False) for g in paper.param_groups)
    with pytest.raises(ValueError, match="adaptor_optimizer"):
        SimpleNet(**TINY, adaptor_optimizer="sgd")
    with pytest.raises(ValueError, match="adaptor_weight_decay"):
        SimpleNet(**TINY, adaptor_weight_decay=-1.0)


def test_adamw_needs_a_torch_whose_adam_decouples(monkeypatch):
    from anomalib_hyperbolic.models.simplenet import lightning_model

    monkeypatch.setattr(lightning_model, "_ADAM_DECOUPLES", False)
    with pytest.raises(RuntimeError, match="adaptor_optimizer='adam'"):
        SimpleNet(**TINY)
    assert SimpleNet(**TINY, adaptor_optimizer="adam").adaptor_optimizer == "adam"


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
    if getattr(model, "feature_standardization", False):
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
        standardized = model.features(torch.cat(batches)).reshape(-1, 32)
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
    assert not hasattr(tiny_model(), "fit_feature_statistics")  # the paper's model has no statistics
    with pytest.raises(RuntimeError, match="feature_standardization=True"):
        tiny_model(relative_noise=True).fit_feature_statistics([torch.zeros(1, 3, 64, 64)])


def _quiet_engine(root) -> object:
    from anomalib.engine import Engine

    return Engine(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, default_root_dir=root, enable_progress_bar=False
    )


def _assert_standardised(model: SimpleNetModel, images: torch.Tensor) -> None:
    """Every channel of the standardised features of ``images`` has mean 0."""
    with torch.no_grad():
        standardized = model.features(images).reshape(-1, model.feature_mean.numel())
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
    assert module.synthetic_defects.coverage == 0.25
    calls = []
    synthesize = module.synthetic_defects.synthesize
    module.synthetic_defects.synthesize = lambda images, pre: calls.append(len(images)) or synthesize(images, pre)
    _quiet_engine(tmp_path / "run").fit(model=module, datamodule=datamodule)
    model = module.model
    assert calls == [4, 4]  # two training batches of two images, two defective copies each
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
def test_defect_batch_takes_the_features_of_the_covered_cells():
    features = torch.randn(2, 8, 8, 32)
    masks = torch.zeros(2, 1, 64, 64)
    assert DefectBatch(features, masks, 1, 0.5).anomalous_features(features, 0).shape == (0, 32)  # no mask
    masks[0, :, :16, :] = 1  # the first two rows of the 8 x 8 grid of image 0
    masks[1, :, :, :3] = 1  # covers 3/8 of the first grid column: less than half, not taken
    torch.testing.assert_close(
        DefectBatch(features, masks, 1, 0.5).anomalous_features(features, 0), features[0, :2].flatten(0, 1)
    )
    # a lower coverage threshold also takes the partly covered column of image 1 (3/8 > 1/4)
    taken = DefectBatch(features, masks, 1, 0.25).anomalous_features(features, 0)
    torch.testing.assert_close(taken, torch.cat([features[0, :2].flatten(0, 1), features[1, :, 0]]))
    # two groups (one per head): head k sees group k only
    grouped = DefectBatch(features, masks, 2, 0.25)
    torch.testing.assert_close(grouped.anomalous_features(features, 0), features[0, :2].flatten(0, 1))
    torch.testing.assert_close(grouped.anomalous_features(features, 1), features[1, :, 0])


def _controlled_defects(module: SimpleNet, shift: float = 1.0) -> list[torch.Tensor]:
    """Replace the generator: defect copies are the images shifted by ``shift``, with fixed masks."""
    masks_made = []

    def synthesize(images, pre_processor):
        masks = torch.zeros(images.shape[0], 1, *images.shape[-2:])
        masks[0::2, :, :16, :] = 1  # every other copy: two rows of its 8 x 8 grid
        masks_made.append(masks)
        return images + shift, masks

    module.synthetic_defects.synthesize = synthesize
    return masks_made


def test_training_step_adds_the_features_under_the_synthetic_masks():
    """The eq. (6) noisy features, then each covered cell's adapted feature, in one discriminator batch."""
    module = SimpleNet(**TINY, synthetic_anomalies=True, synthetic_copies=2)
    _controlled_defects(module)
    module.loss = _RecordingLoss()
    images = torch.randn(2, 3, 64, 64)
    _train_step(module, images)
    ((normal, anomalous),) = module.loss.calls
    assert normal.shape == (2 * 8 * 8,)
    assert anomalous.shape == (2 * 8 * 8 + 2 * 2 * 8,)  # noise per normal feature + two covered rows in 2 of 4 copies
    # the synthetic part holds exactly the covered cells' scores (eval: batch-independent discriminator)
    model = _batch_independent(module.model)
    module.loss.calls.clear()
    module.training_step(_Batch(images))
    with torch.no_grad():
        copies = model.features(images.repeat(2, 1, 1, 1) + 1.0)[0::2, :2]
        expected = model.normality(model.adaptor(copies.flatten(0, 2)), model.discriminator)
    torch.testing.assert_close(module.loss.calls[0][1][2 * 8 * 8 :], expected)


def test_synthesized_anomalies_change_only_the_masked_pixels():
    """The generator sees [0, 1] pixels: the pre-processor's Normalize is undone and redone exactly."""
    torch.manual_seed(0)
    module = SimpleNet(**TINY, synthetic_anomalies=True)
    raw = torch.rand(3, 3, 64, 64)
    images = module.pre_processor.transform(raw)
    synthetic, masks = module.synthetic_defects.synthesize(images, module.pre_processor)
    assert synthetic.shape == images.shape
    assert masks.shape == (3, 1, *images.shape[-2:])  # the pre-processor resized to 256
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.sum() > 0
    outside = (masks == 0).expand_as(images)
    torch.testing.assert_close(synthetic[outside], images[outside], atol=1e-5, rtol=0)
    assert not torch.allclose(synthetic[~outside], images[~outside])


def test_synthetic_anomaly_errors(tmp_path):
    assert SimpleNet(**TINY).synthetic_defects is None
    for synthetic in (True, False):  # bad values are refused whether or not the defects are on
        with pytest.raises(ValueError, match="synthetic_copies"):
            SimpleNet(**TINY, synthetic_anomalies=synthetic, synthetic_copies=0)
        for coverage in (-0.5, 1.0, float("nan")):
            with pytest.raises(ValueError, match="synthetic_coverage"):
                SimpleNet(**TINY, synthetic_anomalies=synthetic, synthetic_coverage=coverage)
        with pytest.raises(ValueError, match="synthetic_anomaly_source"):
            SimpleNet(**TINY, synthetic_anomalies=synthetic, synthetic_anomaly_source=tmp_path / "missing")


# --------------------------------------------------------------------------------------------- fit
@pytest.mark.parametrize("distance", ["euclidean", "poincare"])
def test_tiny_fit_lowers_loss(distance):
    """A few Adam steps on synthetic normal textures lower the truncated L1 loss and raise p_true / p_fake."""
    from anomalib_hyperbolic.testing.synthetic import textured_image

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.tensor(np.stack([textured_image(rng, 64) for _ in range(4)]), dtype=torch.float32)
    images = images.permute(0, 3, 1, 2)
    # Larger learning rates than the paper's so that 30 steps suffice on this tiny problem.
    module = SimpleNet(**TINY, distance=distance, noise_std=0.1, adaptor_lr=1e-2, discriminator_lr=2e-2)
    optimizer = module.configure_optimizers()
    losses, shares = [], []
    for _ in range(30):
        loss, logged = _train_step(module, images)
        shares.append((logged["p_true"], logged["p_fake"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
    # the official diagnostics: normal and noisy features end on the right side of their margins
    assert max(shares[0]) < 0.5
    assert min(shares[-1]) > 0.9


# ------------------------------------------------------------------------------- head ensemble
def test_ensemble_heads_are_independent_and_paper_state_dict_unchanged():
    single = tiny_model()
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
        features = model.features(images)
        per_head = [model.normality(a(features), d) for a, d in model.heads()]
        patch_scores = -torch.stack(per_head).mean(0)
        expected_map = model.blur(F.interpolate(patch_scores.unsqueeze(1), size=(64, 64), mode="bilinear"))
    torch.testing.assert_close(out.anomaly_map, expected_map)
    torch.testing.assert_close(out.pred_score, patch_scores.flatten(1).amax(1))
    # a single head differs from the mean (the test would pass trivially if all heads were one)
    assert not torch.allclose(-per_head[0], patch_scores)


def test_ensemble_training_step_gives_every_head_its_own_loss_and_noise():
    """One loss call per head, in head order; the step's loss is their sum; every head's noise differs."""
    module = SimpleNet(**TINY, ensemble_size=2, noise_std=0.1)
    module.loss = _RecordingLoss()
    images = torch.randn(2, 3, 64, 64)
    loss, _ = _train_step(module, images)
    assert [(n.shape, a.shape) for n, a in module.loss.calls] == [((128,), (128,))] * 2
    torch.testing.assert_close(loss.detach(), sum(TruncatedL1Loss()(n, a) for n, a in module.loss.calls))
    # eval mode (batch-independent discriminators): each call holds its own head's D(q) and D(q-)
    model = _batch_independent(module.model)
    module.loss.calls.clear()
    torch.manual_seed(3)
    module.training_step(_Batch(images))
    torch.manual_seed(3)
    with torch.no_grad():
        features = model.features(images)
        for (adaptor, discriminator), (normal, anomalous) in zip(model.heads(), module.loss.calls, strict=True):
            adapted = adaptor(features).flatten(0, -2)
            torch.testing.assert_close(normal, model.normality(adapted, discriminator))
            torch.testing.assert_close(anomalous, model.normality(model.anomalous(adapted), discriminator))


def test_synthetic_per_head_gives_each_head_its_own_group():
    """K groups of copies; head k's anomalous features are the eq. (6) ones plus group k's covered cells."""
    module = SimpleNet(**TINY, ensemble_size=2, synthetic_anomalies=True, synthetic_copies=1, synthetic_per_head=True)
    masks_made = _controlled_defects(module)
    module.loss = _RecordingLoss()
    images = torch.randn(2, 3, 64, 64)
    _batch_independent(module.model)
    module.training_step(_Batch(images))
    assert masks_made[0].shape[0] == 2 * 2  # heads x copies x images
    model = module.model
    with torch.no_grad():
        copies = model.features(images.repeat(2, 1, 1, 1) + 1.0)
        for index, ((adaptor, disc), (_, anomalous)) in enumerate(zip(model.heads(), module.loss.calls, strict=True)):
            own = copies[2 * index : 2 * index + 1, :2].flatten(0, 2)  # group k's first copy: two rows
            assert anomalous.shape == (2 * 8 * 8 + 2 * 8,)
            torch.testing.assert_close(anomalous[128:], model.normality(adaptor(own), disc))
    # shared (the default): every head sees both groups' covered cells
    shared = SimpleNet(**TINY, ensemble_size=2, synthetic_anomalies=True, synthetic_copies=2)
    _controlled_defects(shared)
    shared.loss = _RecordingLoss()
    _train_step(shared, images)
    assert [a.shape for _, a in shared.loss.calls] == [(2 * 8 * 8 + 2 * 2 * 8,)] * 2
    for kwargs in ({"synthetic_per_head": True}, {"synthetic_anomalies": True, "synthetic_per_head": 1}):
        with pytest.raises(ValueError, match="synthetic_per_head"):
            SimpleNet(**TINY, ensemble_size=2, **kwargs)


def test_ensemble_optimiser_covers_every_head():
    module = SimpleNet(**TINY, ensemble_size=2, noise_std=0.1)
    optimizer = module.configure_optimizers()
    heads = module.model.heads()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for adaptor, disc in heads for p in [*adaptor.parameters(), *disc.parameters()])
    assert [group["lr"] for group in optimizer.param_groups] == [1e-4, 2e-4]
    before = [adaptor.weight.detach().clone() for adaptor, _ in heads]
    loss, _ = _train_step(module, torch.randn(2, 3, 64, 64))
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


def test_engine_fit_logs_the_diagnostics(tmp_path):
    """Through Lightning's ``self.log``: p_true and p_fake reach the trainer's metrics (and any logger)."""
    from anomalib.data import MVTecAD

    from anomalib_hyperbolic.testing import make_mvtec_like_dataset

    root = make_mvtec_like_dataset(tmp_path / "data", n_train=4, n_test_good=1, n_test_defect=1, image_size=64)
    datamodule = MVTecAD(root=root, category="synthetic", train_batch_size=2, eval_batch_size=2, num_workers=0)
    engine = _quiet_engine(tmp_path / "run")
    engine.fit(
        model=SimpleNet(**TINY, pre_processor=SimpleNet.configure_pre_processor((64, 64))), datamodule=datamodule
    )
    metrics = engine.trainer.callback_metrics
    assert {"train_loss", "p_true", "p_fake", "val_p_true"} <= set(metrics)
    assert all(0 <= float(metrics[name]) <= 1 for name in ("p_true", "p_fake", "val_p_true"))


def test_validation_step_logs_val_p_true_on_the_normal_images_only():
    from types import SimpleNamespace

    module = SimpleNet(**TINY, ensemble_size=2)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    model = module.model.eval()
    images = torch.randn(3, 3, 64, 64)
    updated = {}
    batch = SimpleNamespace(image=images, gt_label=torch.tensor([0, 1, 0]), update=lambda **kw: updated.update(kw))
    with torch.no_grad():
        module.validation_step(batch)
        normality = -model.patch_scores(model.features(images))  # the heads' mean D
        expected = model(images)
    assert logged["val_p_true"] == pytest.approx(float((normality[[0, 2]] >= 0.5).float().mean()))
    torch.testing.assert_close(updated["anomaly_map"], expected.anomaly_map)  # the predictions are forward's
    torch.testing.assert_close(updated["pred_score"], expected.pred_score)
    logged.clear()
    batch.gt_label = torch.tensor([1, 1, 1])
    with torch.no_grad():
        module.validation_step(batch)
    assert "val_p_true" not in logged  # no normal image in the batch
