"""Poincaré-ball geometry: agreement with geoopt, Euclidean limit, stability and export."""

from __future__ import annotations

import math

import geoopt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anomalib_hyperbolic import geometry as G

CURVATURES = st.floats(min_value=1e-4, max_value=10.0)
SETTINGS = settings(max_examples=40, deadline=None)


def _ball(c: float) -> geoopt.PoincareBall:
    # geoopt stores c as float32 unless given a tensor; the oracle must be fp64.
    return geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))


def _points(seed: int, c: float, n: int = 6, d: int = 5, max_rel_norm: float = 0.9) -> torch.Tensor:
    """Random points strictly inside the ball (``sqrt(c) ||x|| <= max_rel_norm``)."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, d, generator=gen, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = torch.rand(n, 1, generator=gen, dtype=torch.float64) * max_rel_norm / math.sqrt(c)
    return direction * radius


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol, atol=tol)


@SETTINGS
@given(c=CURVATURES, seed=st.integers(0, 2**16))
def test_matches_geoopt_fp64(c: float, seed: int) -> None:
    ball = _ball(c)
    x, y = _points(seed, c), _points(seed + 1, c)
    # Tangent vectors with sqrt(c)||v|| <= 2, so exp maps stay away from the ball's clamp (tanh(2) = 0.96).
    v = _points(seed + 3, c, max_rel_norm=2.0)
    _close(G.mobius_add(x, y, c), ball.mobius_add(x, y), 1e-5)
    _close(G.poincare_distance(x, y, c), ball.dist(x, y), 1e-5)
    _close(G.expmap0(v, c), ball.expmap0(v), 1e-5)
    _close(G.logmap0(y, c), ball.logmap0(y), 1e-5)
    _close(G.logmap(x, y, c), ball.logmap(x, y), 1e-5)
    _close(G.expmap(x, 0.1 * v, c), ball.expmap(x, 0.1 * v), 1e-5)
    _close(G.pairwise_poincare_distance(x, y, c), ball.dist(x[:, None], y[None]), 1e-5)
    p, a = _points(seed + 2, c, n=3), v[:3]
    _close(G.poincare_hyperplane_distance(x, p, a, c), ball.dist2plane(x[:, None], p[None], a[None]), 1e-5)


@SETTINGS
@given(c=CURVATURES, seed=st.integers(0, 2**16))
def test_matches_geoopt_fp32(c: float, seed: int) -> None:
    ball = _ball(c)
    x, y = _points(seed, c, max_rel_norm=0.8), _points(seed + 1, c, max_rel_norm=0.8)
    v = _points(seed + 3, c, max_rel_norm=2.0)
    x32, y32, v32 = x.float(), y.float(), v.float()
    # fp32 relative error of artanh near the boundary grows like 1/(1 - sqrt(c)||u||): compare relatively.
    _close(G.mobius_add(x32, y32, c), ball.mobius_add(x, y), 1e-4)
    _close(G.poincare_distance(x32, y32, c), ball.dist(x, y), 1e-4)
    _close(G.expmap0(v32, c), ball.expmap0(v), 1e-4)
    _close(G.logmap0(y32, c), ball.logmap0(y), 1e-4)
    _close(G.pairwise_poincare_distance(x32, y32, c), ball.dist(x[:, None], y[None]), 1e-4)


def test_inverse_maps_round_trip() -> None:
    for c in (0.0, 1e-3, 0.01, 1.0):
        x = _points(0, max(c, 1e-2), max_rel_norm=0.5)
        v = torch.randn(6, 5, dtype=torch.float64)
        _close(G.logmap0(G.expmap0(v * 0.1, c), c), v * 0.1, 1e-9)
        _close(G.logmap(x, G.expmap(x, v * 0.1, c), c), v * 0.1, 1e-7)


def test_c_zero_is_euclidean_exactly() -> None:
    x, y, v = torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    assert torch.equal(G.mobius_add(x, y, 0.0), x + y)
    assert torch.equal(G.expmap0(v, 0), v)
    assert torch.equal(G.logmap0(v, 0), v)
    assert torch.equal(G.expmap(x, v, 0.0), x + v)
    assert torch.equal(G.logmap(x, y, 0.0), y - x)
    assert torch.equal(G.poincare_distance(x, y, 0.0), 2 * (x - y).pow(2).sum(-1).sqrt())
    torch.testing.assert_close(G.pairwise_poincare_distance(x[0], y[0], 0.0), 2 * torch.cdist(x[0], y[0]))
    p, a = torch.randn(2, 5), torch.randn(2, 5)
    expected = 2 * ((x[..., None, :] - p) * a).sum(-1).abs() / a.norm(dim=-1)  # the c -> 0 limit
    torch.testing.assert_close(G.poincare_hyperplane_distance(x, p, a, 0.0), expected)
    assert torch.equal(G.project_to_ball(x * 1e6, 0.0), x * 1e6)


@pytest.mark.parametrize("c", [1e-6, 1e-9, 1e-12])
def test_small_c_approaches_euclidean(c: float) -> None:
    """Series branches make c -> 0 continuous, for a python float and a learnable tensor curvature."""
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    for curvature in (c, torch.tensor(c, dtype=torch.float64, requires_grad=True)):
        _close(G.poincare_distance(x, y, curvature), G.poincare_distance(x, y, 0.0), 1e-4)
        _close(G.expmap0(x, curvature), x, 1e-4)
        _close(G.logmap0(G.expmap0(x, curvature), curvature), x, 1e-4)
        p, a = torch.randn(3, 8, dtype=torch.float64) * 0.1, torch.randn(3, 8, dtype=torch.float64)
        for signed in (False, True):
            _close(
                G.poincare_hyperplane_distance(x, p, a, curvature, signed=signed),
                G.poincare_hyperplane_distance(x, p, a, 0.0, signed=signed),
                1e-4,
            )


def test_channel_axis_broadcast() -> None:
    c = 0.5
    x, y = torch.randn(2, 6, 4, 3) * 0.3, torch.randn(2, 6, 4, 3) * 0.3
    expected = G.poincare_distance(x.movedim(1, -1), y.movedim(1, -1), c)
    torch.testing.assert_close(G.poincare_distance(x, y, c, dim=1), expected)
    assert G.poincare_distance(x, y, c, dim=1, keepdim=True).shape == (2, 1, 4, 3)
    torch.testing.assert_close(G.expmap0(x, c, dim=1).movedim(1, -1), G.expmap0(x.movedim(1, -1), c))
    p, a = torch.randn(5, 6) * 0.1, torch.randn(5, 6)
    planes = G.poincare_hyperplane_distance(x, p, a, c, dim=1)
    assert planes.shape == (2, 5, 4, 3)
    torch.testing.assert_close(planes.movedim(1, -1), G.poincare_hyperplane_distance(x.movedim(1, -1), p, a, c))


def test_clip_features() -> None:
    x = torch.randn(10, 384) * 20
    clipped = G.clip_features(x, 2.3)
    torch.testing.assert_close(clipped.norm(dim=-1), torch.full((10,), 2.3))
    small = torch.randn(10, 384) * 1e-3
    assert torch.equal(G.clip_features(small, 2.3), small)
    assert torch.equal(G.clip_features(x, math.inf), x)
    torch.testing.assert_close(G.clip_features(x.T, 2.3, dim=0), clipped.T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("c", [0.0, 1e-4, 0.01, 1.0, 10.0])
def test_stability_huge_zero_and_boundary(dtype: torch.dtype, c: float) -> None:
    """Norms up to 1e6, zero vectors and points on the boundary: finite values and gradients."""
    base = torch.randn(5, 16, dtype=torch.float64)
    base = base / base.norm(dim=-1, keepdim=True)
    scales = torch.tensor([1e6, 1e3, 1.0, 0.0, 1e-8], dtype=torch.float64)[:, None]
    boundary = base / math.sqrt(c) if c > 0 else base * 1e6
    inputs = [base * scales, boundary, torch.zeros(5, 16, dtype=torch.float64)]
    for tensor in inputs:
        v = tensor.clone().to(dtype).requires_grad_(True)
        w = torch.flip(tensor, dims=[0]).clone().to(dtype).requires_grad_(True)
        outputs = [
            G.expmap0(v, c),
            G.logmap0(G.expmap0(v, c), c),
            G.poincare_distance(G.expmap0(G.clip_features(v), c), G.expmap0(w, c), c),
            G.poincare_distance(v, w, c),
            G.poincare_distance_of_tangents(v, w, c),
            G.mobius_add(v, w, c),
            G.logmap(v, w, c),
            G.expmap(v, w, c),
            G.pairwise_poincare_distance(v, w, c),
            G.poincare_hyperplane_distance(v, G.project_to_ball(w[:2], c), w[:2] + 1, c),
            G.logmap0(v, c),
        ]
        total = sum(o.float().sum() for o in outputs)
        assert torch.isfinite(total), [torch.isfinite(o.float()).all().item() for o in outputs]
        total.backward()
        assert torch.isfinite(v.grad.float()).all()
        assert torch.isfinite(w.grad.float()).all()
        for o in outputs:
            assert o.dtype == dtype


def test_points_stay_inside_ball() -> None:
    c = 1.0
    mapped = G.expmap0(torch.randn(100, 8) * 1e6, c)
    assert (mapped.norm(dim=-1) < 1 / math.sqrt(c)).all()
    assert torch.isfinite(G.poincare_distance(mapped, -mapped, c)).all()


def test_learnable_curvature_gets_gradient() -> None:
    c = torch.tensor(0.05, requires_grad=True)
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    G.poincare_distance(G.expmap0(x, c), G.expmap0(y, c), c).sum().backward()
    assert c.grad is not None
    assert torch.isfinite(c.grad)
    assert c.grad.abs() > 0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), torch.tensor(-1.0), "x", torch.ones(2), True])
def test_bad_curvature(bad: object) -> None:
    with pytest.raises(ValueError, match="Curvature `c`"):
        G.expmap0(torch.randn(2, 3), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Curvature `c`"):
        G.poincare_distance(torch.randn(2, 3), torch.randn(2, 3), bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("radius", [0, -1.0, float("nan")])
def test_bad_clip_radius(radius: float) -> None:
    with pytest.raises(ValueError, match="radius"):
        G.clip_features(torch.randn(2, 3), radius)


def test_wrong_rank() -> None:
    with pytest.raises(ValueError, match="dim=1"):
        G.expmap0(torch.randn(5), 0.1, dim=1)
    with pytest.raises(ValueError, match="rank"):
        G.pairwise_poincare_distance(torch.randn(5), torch.randn(5), 0.1)
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        G.poincare_hyperplane_distance(torch.randn(2, 3), torch.randn(3), torch.randn(3), 0.1)


class _HyperbolicProbe(torch.nn.Module):
    """A module using every op, for export checks."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c
        self.p = torch.nn.Parameter(torch.randn(3, 8) * 0.1)
        self.a = torch.nn.Parameter(torch.randn(3, 8))
        self.reference = torch.nn.Parameter(torch.randn(4, 8) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # r = 1: fp32 rounding near the boundary (tanh(2.3) = 0.98 at c = 1) would dominate the comparison.
        h = G.expmap0(G.clip_features(x, 1.0, dim=1), self.c, dim=1)
        d = G.poincare_distance(h, G.expmap(h, 0.1 * x, self.c, dim=1), self.c, dim=1, keepdim=True)
        planes = G.poincare_hyperplane_distance(h, self.p, self.a, self.c, dim=1)
        back = G.logmap0(G.mobius_add(h, G.logmap(h, h * 0.5, self.c, dim=1), self.c, dim=1), self.c, dim=1)
        flat = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        nearest = G.pairwise_poincare_distance(flat, self.reference, self.c).amin(-1)
        return torch.cat([d, planes, back, nearest.reshape(d.shape)], dim=1)


@pytest.mark.parametrize("c", [0.0, 0.01, 1.0])
def test_exports_to_onnx_and_openvino(tmp_path: object, c: float) -> None:
    import openvino as ov

    module = _HyperbolicProbe(c).eval()
    x = torch.randn(2, 8, 5, 5) * 3
    expected = module(x).detach().numpy()
    onnx_path = tmp_path / "probe.onnx"  # type: ignore[operator]
    torch.onnx.export(module, (x,), onnx_path, input_names=["x"], output_names=["y"], dynamo=True)
    core = ov.Core()
    for source in (onnx_path, module):
        model = core.read_model(onnx_path) if source is onnx_path else ov.convert_model(module, example_input=x)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(x.numpy())[0]
        np.testing.assert_allclose(result, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("c", [0.0, 1e-9, 1e-4, 0.01, 0.1, 1.0])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 5.0, 40.0])
@pytest.mark.parametrize("radius", [math.inf, 2.3])
def test_distance_of_tangents_is_the_distance_of_their_exponential_maps(c: float, scale: float, radius: float) -> None:
    """The closed form equals d_c(exp_0(clip(u)), exp_0(clip(v))) in float64, near and far pairs, near the boundary."""
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(32, 24, generator=generator, dtype=torch.float64) * scale / 5
    for v in (u + 1e-3 * torch.randn_like(u), torch.randn_like(u) * scale / 5):
        clipped = [G.clip_features(t, radius) for t in (u, v)]
        expected = G.poincare_distance(G.expmap0(clipped[0], c), G.expmap0(clipped[1], c), c)
        actual = G.poincare_distance_of_tangents(u, v, c, clip_radius=radius)
        # rtol: near the boundary d_c amplifies rounding by about 1 / (1 - c |x|^2) in either computation
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-12)
    channel_axis = G.poincare_distance_of_tangents(u.T[None], v.T[None], c, dim=1, keepdim=True, clip_radius=radius)
    torch.testing.assert_close(channel_axis[0, 0], G.poincare_distance_of_tangents(u, v, c, clip_radius=radius))
    with pytest.raises(ValueError, match="clip_radius"):
        G.poincare_distance_of_tangents(u, v, c, clip_radius=0.0)


@pytest.mark.parametrize("radius", [0, -1.0, float("nan"), True, "2.3", None])
def test_both_hyperbolic_models_reject_a_bad_clip_radius_by_name(radius: object) -> None:
    from anomalib_hyperbolic.models.hadnet import HADNetModel
    from anomalib_hyperbolic.models.hypad.torch_model import HypADModel
    from tests.harness_cases import TINY_HADNET

    with pytest.raises(ValueError, match="clip_radius"):
        G.validate_clip_radius(radius)
    with pytest.raises(ValueError, match="clip_radius"):
        HADNetModel(**TINY_HADNET, clip_radius=radius)
    with pytest.raises(ValueError, match="clip_radius"):
        HypADModel(clip_radius=radius)
    G.validate_clip_radius(math.inf)  # no clipping
