"""Poincaré-ball geometry shared by every model of this package.

The Poincaré ball of curvature ``-c`` (``c > 0``) is ``D^n_c = {x in R^n : c ||x||^2 < 1}``
(HypAD section 3.1, Ganea et al. 2018). ``c == 0`` is flat Euclidean space: every function
here then evaluates the Euclidean formula directly (no division by ``sqrt(c)``), and for
small ``c > 0`` the ratios ``tanh(z)/z`` and ``artanh(z)/z`` are evaluated by their Taylor
series so results and gradients stay continuous as ``c -> 0``.

Conventions:

* ``c`` is a Python number or a scalar tensor (learnable curvature). It must be finite and
  ``>= 0``; anything else raises :class:`ValueError` naming ``c`` (tensors are checked when
  they do not require grad, so that traced/exported graphs stay free of data-dependent checks).
* ``dim`` selects the feature axis, so ``(B, C, H, W)`` maps use ``dim=1`` and every other
  axis broadcasts.
* Half-precision inputs (``float16``/``bfloat16``) are computed in ``float32`` and cast back.
* Points are kept strictly inside the ball (:func:`project_to_ball`) and ``artanh`` arguments
  are clamped below 1, so outputs and gradients stay finite at the boundary and for inputs
  with huge norms.

Every operation is built from elementwise torch ops, reductions and ``matmul``, so modules
using them trace to ONNX and compile with OpenVINO.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "DEFAULT_CLIP_RADIUS",
    "clip_features",
    "conformal_factor",
    "expmap",
    "expmap0",
    "logmap",
    "logmap0",
    "mobius_add",
    "pairwise_poincare_distance",
    "poincare_distance",
    "poincare_distance_of_tangents",
    "poincare_hyperplane_distance",
    "project_to_ball",
    "validate_clip_radius",
    "validate_curvature",
]

#: Feature-clipping radius of Clipped Hyperbolic Classifiers / Hyperbolic ViT (HypAD section 4.2).
DEFAULT_CLIP_RADIUS = 2.3

# Smallest norm used as a divisor; keeps x / ||x|| finite (and its gradient) at x == 0.
_MIN_NORM = 1e-15
# Taylor series below this |z| for tanh(z)/z and artanh(z)/z (error < z^4 ~ 1e-12).
_SERIES_THRESHOLD = 1e-3
# How far inside the boundary points are kept, relative to the ball radius 1/sqrt(c).
_BALL_EPS = {torch.float32: 4e-3, torch.float64: 1e-5}


def validate_curvature(c: float | torch.Tensor, name: str = "c") -> None:
    """Raise ``ValueError`` unless the curvature ``c`` is a finite, non-negative scalar.

    Args:
        c: Curvature magnitude (the ball has sectional curvature ``-c``).
        name: Argument name used in the error message.

    """
    if isinstance(c, torch.Tensor):
        if c.numel() != 1:
            msg = f"Curvature `{name}` must be a scalar, got a tensor of shape {tuple(c.shape)}."
            raise ValueError(msg)
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
        if exporting or c.requires_grad:
            return
        value = float(c.detach())
    elif isinstance(c, bool):  # float(True) is 1.0: a flag passed as the curvature
        msg = f"Curvature `{name}` must be a number >= 0, got the boolean {c!r}."
        raise ValueError(msg)
    else:
        try:
            value = float(c)
        except (TypeError, ValueError) as error:
            msg = f"Curvature `{name}` must be a number >= 0, got {c!r}."
            raise ValueError(msg) from error
    if not math.isfinite(value) or value < 0:
        msg = f"Curvature `{name}` must be a finite number >= 0, got {value}."
        raise ValueError(msg)


def _check_dim(x: torch.Tensor, dim: int, name: str = "x") -> None:
    """Raise ``ValueError`` when ``dim`` is not an axis of ``x`` (e.g. a feature map of the wrong rank)."""
    if not isinstance(x, torch.Tensor):
        msg = f"`{name}` must be a torch.Tensor, got {type(x).__name__}."
        raise TypeError(msg)
    if x.ndim == 0 or not -x.ndim <= dim < x.ndim:
        msg = f"`{name}` has rank {x.ndim} (shape {tuple(x.shape)}); feature axis `dim={dim}` does not exist."
        raise ValueError(msg)


def validate_clip_radius(radius: object, name: str = "clip_radius") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``radius`` is a number > 0 (``math.inf``: no clipping)."""
    if isinstance(radius, bool) or not isinstance(radius, int | float) or math.isnan(radius) or radius <= 0:
        msg = f"Clip radius `{name}` must be a number > 0 (or math.inf to disable), got {radius!r}."
        raise ValueError(msg)


def _is_flat(c: float | torch.Tensor) -> bool:
    """Tell whether ``c`` is a plain Python zero, so the exact Euclidean formula applies."""
    return not isinstance(c, torch.Tensor) and float(c) == 0.0


def _as_tensor(c: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.to(like) if isinstance(c, torch.Tensor) else torch.as_tensor(c, dtype=like.dtype, device=like.device)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in {torch.float16, torch.bfloat16} else x.dtype


def _upcast(*tensors: torch.Tensor) -> tuple[torch.dtype, list[torch.Tensor]]:
    """Return the original dtype and the tensors in a dtype precise enough for the geometry."""
    original = tensors[0].dtype
    dtype = _compute_dtype(tensors[0])
    return original, [t.to(dtype) for t in tensors]


def _norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Euclidean norm along ``dim`` (kept), clamped away from zero so its gradient is finite."""
    return x.pow(2).sum(dim=dim, keepdim=True).clamp_min(_MIN_NORM**2).sqrt()


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` that is exactly 0 at 0 with a zero (not NaN) gradient there."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _atanh(z: torch.Tensor) -> torch.Tensor:
    """``artanh(z) = (log1p(z) - log1p(-z)) / 2`` for ``|z| < 1`` (exports with every ONNX exporter)."""
    return 0.5 * (torch.log1p(z) - torch.log1p(-z))


def _asinh(z: torch.Tensor) -> torch.Tensor:
    """Odd, cancellation-free ``arsinh(z) = sign(z) log1p(|z| + z^2 / (1 + sqrt(1 + z^2)))``."""
    magnitude = z.abs()
    return torch.sign(z) * torch.log1p(magnitude + magnitude.pow(2) / (1 + (1 + magnitude.pow(2)).sqrt()))


def _tanh_ratio(z: torch.Tensor) -> torch.Tensor:
    """``tanh(z) / z`` for ``z >= 0``, with its Taylor series near 0."""
    small = z < _SERIES_THRESHOLD
    safe = torch.where(small, torch.ones_like(z), z)
    series = 1.0 - z.pow(2) / 3.0
    return torch.where(small, series, torch.tanh(safe) / safe)


def _artanh_ratio(z: torch.Tensor) -> torch.Tensor:
    """``artanh(z) / z`` for ``0 <= z < 1``, with its Taylor series near 0."""
    small = z < _SERIES_THRESHOLD
    safe = torch.where(small, torch.full_like(z, 0.5), z)
    series = 1.0 + z.pow(2) / 3.0
    return torch.where(small, series, _atanh(safe) / safe)


def _clamp_artanh_arg(z: torch.Tensor) -> torch.Tensor:
    eps = 1e-7 if z.dtype == torch.float64 else 1e-5
    return z.clamp(max=1.0 - eps)


def conformal_factor(x: torch.Tensor, c: float | torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Conformal factor ``lambda^c_x = 2 / (1 - c ||x||^2)`` of the ball metric (HypAD section 3.1).

    Returns a tensor with ``dim`` kept (size 1). Equals 2 everywhere when ``c == 0``.
    """
    validate_curvature(c)
    _check_dim(x, dim, "x")
    if _is_flat(c):
        return torch.full_like(x.narrow(dim, 0, 1), 2.0)
    c_t = _as_tensor(c, x)
    return 2.0 / (1.0 - c_t * x.pow(2).sum(dim=dim, keepdim=True)).clamp_min(_MIN_NORM)


def project_to_ball(x: torch.Tensor, c: float | torch.Tensor, dim: int = -1, eps: float | None = None) -> torch.Tensor:
    """Pull points back inside the open ball: ``||x|| <= (1 - eps) / sqrt(c)``.

    ``eps`` defaults to ``4e-3`` in float32 and ``1e-5`` in float64 (as geoopt). Identity for ``c == 0``.
    """
    validate_curvature(c)
    _check_dim(x, dim, "x")
    if _is_flat(c):
        return x
    original, (x,) = _upcast(x)
    c_t = _as_tensor(c, x)
    eps = _BALL_EPS.get(x.dtype, 4e-3) if eps is None else eps
    max_norm = (1.0 - eps) / c_t.clamp_min(_MIN_NORM).sqrt()
    norm = _norm(x, dim)
    projected = torch.where(norm > max_norm, x / norm * max_norm, x)
    return projected.to(original)


def clip_features(x: torch.Tensor, radius: float = DEFAULT_CLIP_RADIUS, dim: int = -1) -> torch.Tensor:
    """Feature clipping before the exponential map: ``min(1, r / ||x||) * x``.

    Clipped Hyperbolic Classifiers (Guo et al. 2022), used by Hyperbolic ViT and HypAD section 4.2
    with ``r = 2.3``. Clipping bounds ``sqrt(c) * ||x||`` so that the exponential map never saturates
    ``tanh`` and gradients do not vanish near the boundary.

    Args:
        x: Euclidean (tangent) features.
        radius: Clipping radius ``r > 0``; ``math.inf`` disables clipping.
        dim: Feature axis.

    """
    validate_clip_radius(radius, "radius")
    _check_dim(x, dim, "x")
    if math.isinf(radius):
        return x
    original, (x,) = _upcast(x)
    norm = _norm(x, dim)
    scale = (radius / norm).clamp(max=1.0)
    return (x * scale).to(original)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Möbius addition ``x (+)_c y`` (HypAD eq. (1); HADNet eq. (2)).

    ``((1 + 2c<x,y> + c||y||^2) x + (1 - c||x||^2) y) / (1 + 2c<x,y> + c^2 ||x||^2 ||y||^2)``;
    ``x + y`` when ``c == 0``.
    """
    validate_curvature(c)
    _check_dim(x, dim, "x")
    if _is_flat(c):
        return x + y
    original, (x, y) = _upcast(x, y)
    c_t = _as_tensor(c, x)
    xy = (x * y).sum(dim=dim, keepdim=True)
    x2 = x.pow(2).sum(dim=dim, keepdim=True)
    y2 = y.pow(2).sum(dim=dim, keepdim=True)
    numerator = (1 + 2 * c_t * xy + c_t * y2) * x + (1 - c_t * x2) * y
    denominator = 1 + 2 * c_t * xy + c_t.pow(2) * x2 * y2
    return (numerator / denominator.clamp_min(_MIN_NORM)).to(original)


def _distance_from_norm(norm: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """``(2 / sqrt(c)) artanh(sqrt(c) * norm)``, i.e. HypAD eq. (2) given ``||-x (+)_c y||``."""
    if _is_flat(c):
        return 2.0 * norm
    sqrt_c = _as_tensor(c, norm).sqrt()
    z = _clamp_artanh_arg(sqrt_c * norm)
    return 2.0 * norm * _artanh_ratio(z)


def poincare_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    c: float | torch.Tensor,
    dim: int = -1,
    keepdim: bool = False,
) -> torch.Tensor:
    """Geodesic distance ``d_c(x, y) = (2 / sqrt(c)) artanh(sqrt(c) ||-x (+)_c y||)`` (HypAD eq. (2)).

    For ``c == 0`` this is the limit of HypAD eq. (3), ``2 ||x - y||``, computed directly.
    Broadcasts over every axis but ``dim``; the result has ``dim`` removed unless ``keepdim``.
    """
    validate_curvature(c)
    _check_dim(x, dim, "x")
    original, (x, y) = _upcast(x, y)
    if _is_flat(c):
        diff = y - x
        distance = 2.0 * _safe_sqrt(diff.pow(2).sum(dim=dim, keepdim=True))
    else:
        x = project_to_ball(x, c, dim)
        y = project_to_ball(y, c, dim)
        distance = _distance_from_norm(_norm(mobius_add(-x, y, c, dim), dim), c)
    distance = distance.to(original)
    return distance if keepdim else distance.squeeze(dim)


def poincare_distance_of_tangents(
    u: torch.Tensor,
    v: torch.Tensor,
    c: float | torch.Tensor,
    dim: int = -1,
    keepdim: bool = False,
    clip_radius: float = math.inf,
) -> torch.Tensor:
    """``d_c(exp_0(clip_r(u)), exp_0(clip_r(v)))`` (HypAD eqs. (2) and (4)) in closed form, without the points.

    Clipping (:func:`clip_features`) and the exponential map both scale a vector, so the points are
    ``x = A u`` and ``y = B v`` with per-vector factors ``A``, ``B`` (``x`` kept inside the ball as
    :func:`project_to_ball` keeps it); then ``||-x (+)_c y||^2 = ||x - y||^2 / (1 - 2c<x,y> + c^2 |x|^2 |y|^2)``
    and ``||x - y||^2 = A^2 |w|^2 + 2A(A - B)<w,v> + (A - B)^2 |v|^2`` with ``w = u - v``, which stays
    accurate when ``x ~ y`` (no difference of large squares). Only four channel reductions of ``u``,
    ``v`` and ``w`` are formed: an exported graph computes a map of distances without the
    per-channel clip, exponential-map and Möbius chain of :func:`poincare_distance` (the same values
    up to rounding; ``2 |u - v|`` for ``c == 0`` without clipping).
    """
    validate_curvature(c)
    _check_dim(u, dim, "u")
    validate_clip_radius(clip_radius)
    original, (u, v) = _upcast(u, v)
    w = u - v
    # vector norms: one fused reduction each in an exported graph (ONNX ReduceL2), no squared copy of the map
    w_norm = torch.linalg.vector_norm(w, dim=dim, keepdim=True)
    if _is_flat(c) and math.isinf(clip_radius):
        return _squeeze(2.0 * w_norm, dim, keepdim).to(original)
    w2 = w_norm.pow(2)
    u_norm = torch.linalg.vector_norm(u, dim=dim, keepdim=True).clamp_min(_MIN_NORM)
    v_norm = torch.linalg.vector_norm(v, dim=dim, keepdim=True).clamp_min(_MIN_NORM)
    a, b = u_norm.new_ones(()), v_norm.new_ones(())
    if not math.isinf(clip_radius):  # clip_r: min(1, r / |u|) u
        a, b = (clip_radius / u_norm).clamp(max=1.0), (clip_radius / v_norm).clamp(max=1.0)
    if not _is_flat(c):  # exp_0: tanh(sqrt(c) |u|) / (sqrt(c) |u|), then project_to_ball's bound
        c_t = _as_tensor(c, u)
        sqrt_c = c_t.sqrt()
        max_norm = (1.0 - _BALL_EPS.get(u.dtype, 4e-3)) / sqrt_c.clamp_min(_MIN_NORM)
        a = a * torch.minimum(_tanh_ratio(sqrt_c * a * u_norm), max_norm / (a * u_norm))
        b = b * torch.minimum(_tanh_ratio(sqrt_c * b * v_norm), max_norm / (b * v_norm))
    wv = (w * v).sum(dim=dim, keepdim=True)
    v2 = v_norm.pow(2)
    difference2 = (a.pow(2) * w2 + 2 * a * (a - b) * wv + (a - b).pow(2) * v2).clamp_min(0)
    if _is_flat(c):
        return _squeeze(2.0 * _safe_sqrt(difference2), dim, keepdim).to(original)
    x2, y2 = (a * u_norm).pow(2), (b * v_norm).pow(2)
    xy = a * b * (wv + v2)  # <u, v> = <w, v> + |v|^2
    denominator = (1 - 2 * c_t * xy + c_t.pow(2) * x2 * y2).clamp_min(_MIN_NORM)
    distance = _distance_from_norm(_safe_sqrt(difference2 / denominator), c)
    return _squeeze(distance, dim, keepdim).to(original)


def _squeeze(distance: torch.Tensor, dim: int, keepdim: bool) -> torch.Tensor:
    return distance if keepdim else distance.squeeze(dim)


def pairwise_poincare_distance(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """All-pairs distances (a ``torch.cdist`` for the ball) between ``x (..., N, D)`` and ``y (..., M, D)``.

    Uses the closed form of ``||-x (+)_c y||^2`` in terms of ``<x,y>``, ``||x||^2`` and ``||y||^2``,
    so memory is ``O(N M)`` rather than ``O(N M D)``. Returns ``(..., N, M)``; ``2 * cdist`` for ``c == 0``.
    """
    validate_curvature(c)
    if x.ndim < 2 or y.ndim < 2:
        msg = f"pairwise_poincare_distance needs `x` (..., N, D) and `y` (..., M, D); got ranks {x.ndim} and {y.ndim}."
        raise ValueError(msg)
    if x.shape[-1] != y.shape[-1]:
        msg = f"pairwise_poincare_distance: feature sizes differ, x has {x.shape[-1]} and y has {y.shape[-1]}."
        raise ValueError(msg)
    original, (x, y) = _upcast(x, y)
    if _is_flat(c):
        squared = x.pow(2).sum(-1, keepdim=True) - 2 * x @ y.transpose(-1, -2) + y.pow(2).sum(-1).unsqueeze(-2)
        return (2.0 * _safe_sqrt(squared.clamp_min(0))).to(original)
    x = project_to_ball(x, c)
    y = project_to_ball(y, c)
    c_t = _as_tensor(c, x)
    # a = -x, b = y: a (+) b = (A a + B b) / D with A = 1 + 2c<a,b> + c|b|^2, B = 1 - c|a|^2.
    ab = -(x @ y.transpose(-1, -2))
    a2 = x.pow(2).sum(-1, keepdim=True)
    b2 = y.pow(2).sum(-1).unsqueeze(-2)
    coef_a = 1 + 2 * c_t * ab + c_t * b2
    coef_b = 1 - c_t * a2
    denominator = (1 + 2 * c_t * ab + c_t.pow(2) * a2 * b2).clamp_min(_MIN_NORM)
    numerator_sq = coef_a.pow(2) * a2 + 2 * coef_a * coef_b * ab + coef_b.pow(2) * b2
    norm = numerator_sq.clamp_min(_MIN_NORM**2).sqrt() / denominator
    return _distance_from_norm(norm, c).to(original)


def expmap0(v: torch.Tensor, c: float | torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exponential map at the origin, HypAD eq. (4) with ``h0 = 0`` (``lambda_0 = 2``).

    ``exp_0(v) = tanh(sqrt(c) ||v||) v / (sqrt(c) ||v||)``, projected strictly inside the ball;
    the identity when ``c == 0``.
    """
    validate_curvature(c)
    _check_dim(v, dim, "v")
    if _is_flat(c):
        return v
    original, (v,) = _upcast(v)
    sqrt_c = _as_tensor(c, v).sqrt()
    mapped = v * _tanh_ratio(sqrt_c * _norm(v, dim))
    return project_to_ball(mapped, c, dim).to(original)


def expmap(x: torch.Tensor, v: torch.Tensor, c: float | torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exponential map at a point ``x`` (HypAD eq. (4); HADNet eq. (3)).

    ``exp_x(v) = x (+)_c (tanh(sqrt(c) lambda_x ||v|| / 2) v / (sqrt(c) ||v||))``; ``x + v`` when ``c == 0``.
    """
    validate_curvature(c)
    _check_dim(v, dim, "v")
    if _is_flat(c):
        return x + v
    original, (x, v) = _upcast(x, v)
    sqrt_c = _as_tensor(c, v).sqrt()
    lam = conformal_factor(x, c, dim)
    second = v * (lam / 2) * _tanh_ratio(sqrt_c * lam * _norm(v, dim) / 2)
    return project_to_ball(mobius_add(x, project_to_ball(second, c, dim), c, dim), c, dim).to(original)


def logmap0(y: torch.Tensor, c: float | torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Logarithmic map at the origin, the inverse of :func:`expmap0`.

    ``log_0(y) = artanh(sqrt(c) ||y||) y / (sqrt(c) ||y||)``; the identity when ``c == 0``.
    """
    validate_curvature(c)
    _check_dim(y, dim, "y")
    if _is_flat(c):
        return y
    original, (y,) = _upcast(y)
    y = project_to_ball(y, c, dim)
    sqrt_c = _as_tensor(c, y).sqrt()
    z = _clamp_artanh_arg(sqrt_c * _norm(y, dim))
    return (y * _artanh_ratio(z)).to(original)


def logmap(x: torch.Tensor, y: torch.Tensor, c: float | torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Logarithmic map at ``x`` (HADNet eq. (4)), the inverse of :func:`expmap`.

    ``log_x(y) = (2 / (sqrt(c) lambda_x)) artanh(sqrt(c) ||u||) u / ||u||`` with ``u = -x (+)_c y``;
    ``y - x`` when ``c == 0``.
    """
    validate_curvature(c)
    _check_dim(y, dim, "y")
    if _is_flat(c):
        return y - x
    original, (x, y) = _upcast(x, y)
    x = project_to_ball(x, c, dim)
    y = project_to_ball(y, c, dim)
    sqrt_c = _as_tensor(c, y).sqrt()
    u = mobius_add(-x, y, c, dim)
    z = _clamp_artanh_arg(sqrt_c * _norm(u, dim))
    lam = conformal_factor(x, c, dim)
    return (u * (2.0 / lam) * _artanh_ratio(z)).to(original)


def poincare_hyperplane_distance(
    x: torch.Tensor,
    p: torch.Tensor,
    a: torch.Tensor,
    c: float | torch.Tensor,
    dim: int = -1,
    signed: bool = False,
) -> torch.Tensor:
    """Distance from points to Poincaré hyperplanes (Ganea et al. 2018, hyperbolic MLR; HADNet eqs. (6)-(7)).

    The hyperplane through ``p`` (on the ball) with normal ``a`` (a tangent vector at ``p``) is
    ``{z : <-p (+)_c z, a> = 0}``; the distance of ``x`` to it is
    ``(1 / sqrt(c)) arsinh(2 sqrt(c) |<-p (+)_c x, a>| / ((1 - c ||-p (+)_c x||^2) ||a||))``,
    and for ``c == 0`` its limit ``2 |<x - p, a>| / ||a||``: twice the Euclidean point-plane distance
    (the ball's conformal factor at the origin is 2, as in :func:`poincare_distance`), so the
    distance is continuous in ``c`` (HADNet issue 20: it used to drop the factor 2 at ``c = 0``).

    Args:
        x: Points, feature axis ``dim``; any leading/trailing axes.
        p: ``(K, D)`` hyperplane offsets (points of the ball).
        a: ``(K, D)`` hyperplane normals.
        c: Curvature.
        dim: Feature axis of ``x``.
        signed: Keep the sign of ``<-p (+) x, a>`` (which side of the plane) instead of its absolute value.

    Returns:
        ``x``'s shape with ``dim`` replaced by ``K`` (one distance per hyperplane).

    """
    validate_curvature(c)
    _check_dim(x, dim, "x")
    if p.ndim != 2 or a.shape != p.shape:
        msg = f"Hyperplane offsets `p` and normals `a` must both be (K, D); got {tuple(p.shape)} and {tuple(a.shape)}."
        raise ValueError(msg)
    if x.shape[dim] != p.shape[-1]:
        msg = f"Feature axis {dim} of `x` has size {x.shape[dim]}, hyperplanes have dimension {p.shape[-1]}."
        raise ValueError(msg)
    original, (x, p, a) = _upcast(x, p, a)
    features = x.movedim(dim, -1).unsqueeze(-2)  # (..., 1, D)
    a_norm = _norm(a, -1).squeeze(-1)  # (K,)
    if _is_flat(c):
        inner = ((features - p) * a).sum(-1)
        distance = 2 * inner / a_norm  # the c -> 0 limit of the branch below
    else:
        p = project_to_ball(p, c)
        features = project_to_ball(features, c)
        sqrt_c = _as_tensor(c, x).sqrt()
        diff = mobius_add(-p, features, c)  # (..., K, D)
        inner = (diff * a).sum(-1)
        diff_sq = diff.pow(2).sum(-1)
        c_t = sqrt_c.pow(2)
        argument = 2 * sqrt_c * inner / ((1 - c_t * diff_sq).clamp_min(_MIN_NORM) * a_norm)
        distance = _asinh(argument) / sqrt_c.clamp_min(_MIN_NORM)
    if not signed:
        distance = distance.abs()
    return distance.movedim(-1, dim if dim >= 0 else x.ndim + dim).to(original)
