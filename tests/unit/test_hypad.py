"""HypAD: c = 0 is anomalib's EfficientAd, stability near c -> 0, learnable c, teacher loading, bad input, export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

from anomalib_hyperbolic.models import HypAD
from anomalib_hyperbolic.models.hypad.distill import build_pdn
from anomalib_hyperbolic.models.hypad.loss import hyperbolic_discrepancy
from anomalib_hyperbolic.models.hypad.torch_model import HypADModel

SIZE = 256  # EfficientAD's autoencoder needs >= 256 px
CH = 384


def _pair(**hypad_kwargs: object) -> tuple[EfficientAdModel, HypADModel]:
    torch.manual_seed(0)
    reference = EfficientAdModel(teacher_out_channels=CH)
    reference.mean_std.update({"mean": torch.randn(1, CH, 1, 1), "std": torch.rand(1, CH, 1, 1) + 0.5})
    model = HypADModel(teacher_out_channels=CH, **hypad_kwargs)
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected
    assert set(missing) <= {"curvature_raw"}
    return reference, model


EUCLIDEAN = {"c": 0.0, "clip_radius": math.inf, "projection": "identity"}


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, SIZE, SIZE, generator=generator), torch.rand(1, 3, SIZE, SIZE, generator=generator)


def test_c0_equals_efficientad_losses_gradients_and_maps(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Same seed, weights and data: identical losses, one identical Adam step, identical maps."""
    batch, imagenet = images
    reference, model = _pair(**EUCLIDEAN)
    optimizers = [
        torch.optim.Adam(list(m.student.parameters()) + list(m.ae.parameters()), lr=1e-4) for m in (reference, model)
    ]
    for step in range(1):
        losses = []
        for network, optimizer in zip((reference, model), optimizers, strict=True):
            network.train()
            torch.manual_seed(10 + step)
            loss_st, loss_ae, loss_stae = network(batch, imagenet)
            optimizer.zero_grad()
            (loss_st + loss_ae + loss_stae).backward()
            optimizer.step()
            losses.append(torch.stack([loss_st, loss_ae, loss_stae]).detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for a, b in zip(reference.state_dict().values(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    quantiles = {
        "qa_st": torch.tensor(0.1),
        "qb_st": torch.tensor(0.9),
        "qa_ae": torch.tensor(0.2),
        "qb_ae": torch.tensor(1.1),
    }
    for network in (reference, model):
        network.eval()
        network.quantiles.update(quantiles)
    with torch.no_grad():
        expected, actual = reference(batch), model(batch)
        raw_expected, raw_actual = reference.get_maps(batch), model.get_maps(batch)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map, rtol=0, atol=0)
    torch.testing.assert_close(actual.pred_score, expected.pred_score, rtol=0, atol=0)
    for a, b in zip(raw_expected, raw_actual, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["tangent", "location", "channel"])
def test_discrepancy_modes_reduce_to_squared_difference_at_c0(mode: str) -> None:
    x, y = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 3, 3)
    squared = (x - y) ** 2
    expected = squared.mean(dim=1, keepdim=True) if mode == "location" else squared
    torch.testing.assert_close(hyperbolic_discrepancy(x, y, 0.0, mode), expected, rtol=1e-6, atol=1e-6)


def test_tangent_discrepancy_sums_to_half_geodesic_squared() -> None:
    from anomalib_hyperbolic.geometry import expmap0, poincare_distance

    x = expmap0(torch.randn(2, 8, 2, 2, dtype=torch.float64), 0.3, dim=1)
    y = expmap0(torch.randn(2, 8, 2, 2, dtype=torch.float64), 0.3, dim=1)
    half = poincare_distance(x, y, 0.3, dim=1, keepdim=True) / 2
    torch.testing.assert_close(hyperbolic_discrepancy(x, y, 0.3).sum(1, keepdim=True), half**2)
    torch.testing.assert_close(hyperbolic_discrepancy(x, y, 0.3, "location") * 8, half**2)


def test_location_mode_matches_efficientad_maps_at_c0(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    batch, _ = images
    reference, model = _pair(**{**EUCLIDEAN, "discrepancy": "location"})
    reference.eval()
    model.eval()
    with torch.no_grad():
        for a, b in zip(reference.get_maps(batch), model.get_maps(batch), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c", [1e-9, 1e-6, 1e-3])
def test_losses_finite_and_continuous_near_c0(c: float) -> None:
    """Feature-level losses (hard, penalty, AE-style mean) at small c: finite, finite gradients, close to c = 0."""
    from anomalib_hyperbolic.models.hypad.loss import hard_feature_loss

    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(1, CH, 56, 56, generator=generator)
    student0 = (teacher + 0.3 * torch.randn(1, CH, 56, 56, generator=generator)).requires_grad_()
    values = []
    for curvature in (0.0, c, torch.tensor(c, requires_grad=True)):
        model = HypADModel(c=0.0 if isinstance(curvature, torch.Tensor) else curvature)
        if isinstance(curvature, torch.Tensor):
            model._fixed_c = curvature
        student0.grad = None
        distance = model.distance(teacher, student0)
        origin = torch.zeros_like(model.to_ball(student0))
        penalty = hyperbolic_discrepancy(origin, model.to_ball(student0), model.curvature).mean()
        losses = torch.stack([hard_feature_loss(distance), penalty, distance.mean()])
        losses.sum().backward()
        assert torch.isfinite(losses).all()
        assert torch.isfinite(student0.grad).all()
        if isinstance(curvature, torch.Tensor):
            assert torch.isfinite(curvature.grad)
        values.append(losses.detach())
    torch.testing.assert_close(values[1], values[0], rtol=100 * c + 1e-5, atol=1e-6)
    torch.testing.assert_close(values[2], values[1], rtol=1e-5, atol=1e-7)


def test_learnable_curvature_stays_positive_and_trains(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    batch, imagenet = images
    _, model = _pair(c=0.05, learn_curvature=True)
    assert float(model.curvature) == pytest.approx(0.05, rel=1e-5)
    optimizer = torch.optim.Adam([model.curvature_raw, *model.student.parameters()], lr=0.5)
    model.train()
    for _ in range(1):
        loss = torch.stack(model(batch, imagenet)).sum()
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(model.curvature_raw.grad)
        optimizer.step()
        assert float(model.curvature) > 0


def test_teacher_loading_and_key_mismatch(tmp_path: Path) -> None:
    teacher = build_pdn("small")
    file = tmp_path / "teacher_small.pth"
    torch.save(teacher.state_dict(), file)
    model = HypAD(teacher_weights=file, imagenet_dir=None)
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(model.model.teacher.state_dict()[key], value)
    # a distillation checkpoint ({"teacher": ...}) is accepted too
    checkpoint = tmp_path / "distill.ckpt"
    torch.save({"teacher": teacher.state_dict(), "step": 3}, checkpoint)
    HypAD(teacher_weights=checkpoint, imagenet_dir=None)

    with pytest.raises(ValueError, match=r"PDN-M.*missing keys \['conv5.bias', 'conv5.weight', 'conv6.bias'"):
        HypAD(model_size="medium", teacher_weights=file, imagenet_dir=None)
    with pytest.raises(ValueError, match=r"shape mismatches \[conv4.bias: file \(384,\) vs model \(64,\)"):
        HypAD(teacher_out_channels=64, projection="identity", teacher_weights=file, imagenet_dir=None)
    with pytest.raises(FileNotFoundError, match="teacher_weights"):
        HypAD(teacher_weights=tmp_path / "missing.pth", imagenet_dir=None)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read teacher weights"):
        HypAD(teacher_weights=junk, imagenet_dir=None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"c": -0.1}, "Curvature `c`"),
        ({"c": float("nan")}, "Curvature `c`"),
        ({"model_size": "large"}, "Unknown PDN size `model_size='large'`"),
        ({"c": 0.0, "learn_curvature": True}, "learn_curvature"),
        ({"projection": "maxpool"}, "projection"),
        ({"projection_kernel": 5}, "projection_kernel"),
        ({"discrepancy": "l2"}, "discrepancy"),
        ({"clip_radius": 0.0}, "clip_radius"),
        ({"augmentation_prob": 1.5}, "augmentation_prob"),
        ({"penalty": "none"}, "penalty"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HypAD(imagenet_dir=None, pretrained_teacher=False, **kwargs)


def test_model_sizes_and_registration() -> None:
    from anomalib.models import get_model

    assert isinstance(get_model("HypAD", imagenet_dir=None), HypAD)
    medium = HypAD(model_size="m", imagenet_dir=None)
    assert medium.model.teacher.conv6.out_channels == CH
    assert medium.model.student.conv6.out_channels == 2 * CH


def test_clipping_with_c0_is_valid_and_direction_only(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    batch, _ = images
    _, model = _pair(c=0.0, clip_radius=2.3, projection="identity")
    model.eval()
    with torch.no_grad():
        student = model.student(batch)[:, :CH]
        embedded = model.to_ball(student)
    norms = embedded.norm(dim=1)
    assert torch.all(norms <= 2.3 + 1e-4)
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out.anomaly_map).all()


def test_augmentation_is_efficientads_by_default_and_a_probability_optionally() -> None:
    """Default: every AE view jittered with EfficientAD's random stream; ``augmentation_prob`` < 1 skips some."""
    image = torch.rand(1, 3, 8, 8)
    default = HypADModel()
    assert default.augmentation_prob == 1.0
    for seed in range(5):
        torch.manual_seed(seed)
        augmented = default.augment(image)
        torch.manual_seed(seed)
        torch.testing.assert_close(augmented, EfficientAdModel.choose_random_aug_image(image), rtol=0, atol=0)
    assert torch.equal(HypADModel(augmentation_prob=0.0).augment(image), image)
    literal = HypADModel(augmentation_prob=0.2)
    torch.manual_seed(0)
    unchanged = sum(torch.equal(literal.augment(image), image) for _ in range(200))
    assert 140 <= unchanged <= 180  # about 80 % unaugmented


class _Outputs(torch.nn.Module):
    """(score, map) tuple for exporters that do not take anomalib's InferenceBatch."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out.pred_score, out.anomaly_map


def test_export_openvino_matches_torch(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Default HypAD (c=0.01, r=2.3, pooling) exports to OpenVINO and matches torch."""
    import openvino as ov

    batch, _ = images
    _, model = _pair()
    quantiles = {"qa_st": 0.01, "qb_st": 0.2, "qa_ae": 0.02, "qb_ae": 0.3}
    model.quantiles.update({k: torch.tensor(v) for k, v in quantiles.items()})
    model.eval()
    wrapped = _Outputs(model).eval()
    with torch.no_grad():
        score, anomaly_map = wrapped(batch)
    converted = ov.convert_model(wrapped, example_input=batch)
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(batch.numpy())
    ov_score, ov_map = (torch.from_numpy(result[output]) for output in compiled.outputs)
    torch.testing.assert_close(ov_score.reshape(score.shape), score, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(ov_map.reshape(anomaly_map.shape), anomaly_map, rtol=1e-3, atol=1e-4)


def _pooled_norms_between(low: float, high: float, model: HypADModel) -> torch.Tensor:
    """Student-like ``(1, 384, 8, 8)`` output whose projected (pooled) vectors have norms in ``[low, high]``."""
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(1, CH, 8, 8, generator=generator)
    norms = model.projection(features).norm(dim=1, keepdim=True)
    target = torch.empty(1, 1, 8, 8).uniform_(low, high, generator=generator)
    return (features * target / norms).requires_grad_()


def test_penalty_has_a_gradient_at_realistic_feature_norms() -> None:
    """Standardised pooled PDN features have norms of 10-14: far beyond the clipping radius 2.3."""
    model = HypADModel()  # paper defaults: c = 0.01, r = 2.3, channel pooling, penalty="unclipped"
    student = _pooled_norms_between(10.0, 14.0, model)
    penalty = model.penalty_loss(student)
    (gradient,) = torch.autograd.grad(penalty, student)
    expected = torch.autograd.grad(model.projection(student).pow(2).mean(), student)[0]
    torch.testing.assert_close(gradient, expected)
    assert gradient.norm() > 1e-3
    # it pushes toward the origin: the gradient points along the features (EfficientAD's mean(s^2))
    assert torch.sum(gradient * student) > 0

    v1 = HypADModel(penalty="clipped")  # HypAD v1: clipped first, every norm is r, constant r^2 / C
    clipped = v1.penalty_loss(student)
    (v1_gradient,) = torch.autograd.grad(clipped, student)
    torch.testing.assert_close(clipped, torch.tensor(2.3**2 / (CH // 2)))
    assert v1_gradient.norm() < 1e-6 * gradient.norm()


@pytest.mark.parametrize("mode", ["tangent", "location", "channel"])
@pytest.mark.parametrize("c", [0.01, 0.1])
def test_penalty_closed_form_is_the_discrepancy_to_the_origin(mode: str, c: float) -> None:
    """``mean(p^2)`` equals ``mean(D(0, exp_0(p)))`` computed on the ball (where float64 does not saturate)."""
    from anomalib_hyperbolic.models.hypad.loss import embed_to_ball

    model = HypADModel(c=c, discrepancy=mode, clip_radius=math.inf).double()
    student = _pooled_norms_between(1.0, 4.0, model).double()
    embedded = embed_to_ball(model.projection(student), c, mode)
    on_ball = hyperbolic_discrepancy(torch.zeros_like(embedded), embedded, c, mode)
    torch.testing.assert_close(model.penalty_loss(student), on_ball.mean())


def test_learnt_curvature_has_no_weight_decay_and_a_positive_loss_gradient(
    images: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """The optimiser excludes ``c`` from weight decay; the losses grow with ``c`` (dL/dc > 0, so c collapses)."""
    from lightning.pytorch import Trainer

    model = HypAD(c=0.05, learn_curvature=True, pretrained_teacher=False, imagenet_dir=None)
    model.trainer = Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    optimizer = model.configure_optimizers()["optimizer"]
    networks, curvature = optimizer.param_groups
    assert curvature["params"] == [model.model.curvature_raw]
    assert curvature["weight_decay"] == 0.0
    assert networks["weight_decay"] == model.weight_decay == 1e-5
    assert {id(p) for p in networks["params"]} == {
        id(p) for p in [*model.model.student.parameters(), *model.model.ae.parameters()]
    }
    fixed = HypAD(pretrained_teacher=False, imagenet_dir=None)
    fixed.trainer = model.trainer
    assert len(fixed.configure_optimizers()["optimizer"].param_groups) == 1

    batch, imagenet = images
    network = model.model.train()
    network.mean_std.update({"mean": torch.zeros(1, CH, 1, 1), "std": torch.ones(1, CH, 1, 1)})
    torch.manual_seed(0)
    loss_st, loss_ae, loss_stae = network(batch, imagenet)
    for loss in (loss_st, loss_ae, loss_stae):
        (gradient,) = torch.autograd.grad(loss, network.curvature_raw, retain_graph=True)
        assert gradient > 0


def test_hyperbolic_path_matches_geoopt(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    """c = 0.1 with pooling and clipping: losses and maps against an independent computation with geoopt.

    Hand-written channel pooling and clipping, geoopt's ``expmap0``, ``mobius_add``, ``logmap0`` and
    ``dist`` (HypAD eqs. (1), (2), (4), (6)); float64.
    """
    import geoopt
    import torch.nn.functional as F

    c = 0.1
    ball = geoopt.PoincareBall(c=c).double()  # geoopt keeps c (and sqrt(c)) in float32 otherwise
    radius, half = 2.3, CH // 2
    _, model = _pair(c=c)
    model = model.double()
    batch, imagenet = (image.double() for image in images)

    def embed(features: torch.Tensor) -> torch.Tensor:  # (B, 384, H, W) -> points (B, H, W, 192)
        b, _, h, w = features.shape
        pooled = features.reshape(b, half, 2, h, w).mean(2).permute(0, 2, 3, 1)
        clipped = pooled * torch.clamp(radius / pooled.norm(dim=-1, keepdim=True), max=1.0)
        return ball.expmap0(clipped)

    def discrepancy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # per element, channels last
        return ball.logmap0(ball.mobius_add(-x, y)).pow(2)

    def teacher(image: torch.Tensor) -> torch.Tensor:
        return (model.teacher(image) - model.mean_std["mean"]) / model.mean_std["std"]

    with torch.no_grad():
        model.train()
        torch.manual_seed(3)
        losses = torch.stack(model(batch, imagenet))

        student, teacher_output = model.student(batch), teacher(batch)  # the PDNs have no dropout
        d_st = discrepancy(embed(teacher_output), embed(student[:, :CH]))
        hard = d_st[d_st >= torch.quantile(d_st.flatten(), 0.999)].mean()
        pooled = model.student(imagenet)[:, :CH].reshape(1, half, 2, 56, 56).mean(2).permute(0, 2, 3, 1)
        penalty = (ball.dist0(ball.expmap0(pooled)) / 2).pow(2).mean() / half  # D(0, exp_0(p)), unclipped
        torch.manual_seed(3)
        augmented = EfficientAdModel.choose_random_aug_image(batch)
        ae = embed(model.ae(augmented, batch.shape[-2:]))
        loss_ae = discrepancy(embed(teacher(augmented)), ae).mean()
        loss_stae = discrepancy(ae, embed(model.student(augmented)[:, CH:])).mean()
        expected = torch.stack([hard + penalty, loss_ae, loss_stae])
        torch.testing.assert_close(losses, expected, rtol=1e-7, atol=0)  # geoopt's own error: ~2e-8

        model.eval()
        maps = model.get_maps(batch)
        pairs = [(teacher_output, student[:, :CH]), (model.ae(batch, batch.shape[-2:]), student[:, CH:])]
        for actual, (x, y) in zip(maps, pairs, strict=True):
            raw = (ball.dist(embed(x), embed(y)) / 2).pow(2) / half  # channel mean = (d_c / 2)^2 / C
            expected_map = F.interpolate(F.pad(raw[:, None], (4, 4, 4, 4)), size=(SIZE, SIZE), mode="bilinear")
            torch.testing.assert_close(actual, expected_map, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"clip_radius": math.inf}, {"c": 0.1}, {"c": 0.0, "projection": "identity"}, {"discrepancy": "location"}],
)
def test_inference_maps_in_closed_form_equal_the_per_channel_discrepancy(
    images: tuple[torch.Tensor, torch.Tensor], kwargs: dict
) -> None:
    """The exported maps (closed-form distances) are the channel means of the training discrepancy."""
    batch, _ = images
    _, model = _pair(**kwargs)
    model.eval()
    with torch.no_grad():
        teacher = model._normalize_teacher(model.teacher(batch))
        student = model.student(batch)
        ae = model.ae(batch, batch.shape[-2:])
        expected_st = model.distance(teacher, student[:, :CH]).mean(dim=1, keepdim=True)
        expected_stae = model.distance(ae, student[:, CH:]).mean(dim=1, keepdim=True)
        _, map_st = model.compute_student_teacher_distance(batch)
        raw_st, raw_stae = model.get_maps(batch)
        _, map_stae = model.compute_maps(batch, student, map_st, normalize=False)
    torch.testing.assert_close(map_st, expected_st, rtol=1e-4, atol=1e-7)
    reference_st, reference_stae = (
        torch.nn.functional.interpolate(
            torch.nn.functional.pad(m, (4, 4, 4, 4)), size=batch.shape[-2:], mode="bilinear"
        )
        for m in (expected_st, expected_stae)
    )
    torch.testing.assert_close(raw_st, reference_st, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(raw_stae, reference_stae, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(map_stae, raw_stae, rtol=1e-4, atol=1e-7)


def test_folded_projection_equals_the_projected_outputs(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Inference folds the channel pooling (and the teacher's standardisation) into each network's last layer."""
    batch, _ = images
    _, model = _pair()
    model.eval()
    assert model.folds_projection
    with torch.no_grad():
        teacher = model._normalize_teacher(model.teacher(batch))
        pairs = [
            (model.projected_output(model.teacher, batch, standardize=True), teacher),
            (model.projected_output(model.student, batch), model.student(batch)),
            (model.projected_output(model.ae, batch, batch.shape[-2:]), model.ae(batch, batch.shape[-2:])),
        ]
    for folded, output in pairs:
        assert folded.shape[1] == output.shape[1] // 2
        torch.testing.assert_close(folded, model.projection(output), rtol=1e-4, atol=1e-5)
    assert not HypADModel(teacher_out_channels=CH, projection="identity").folds_projection
