"""Gaussian-derivative basis filters: the building blocks of every N-Jet filter.

The discretisation is the one of ``scipy.ndimage.gaussian_filter``: the Gaussian sampled on the integer grid
``-R..R`` with ``R = ceil(k * sigma)``, normalised to sum 1, times the exact Hermite derivative factor, times
``sigma**m`` (scale normalisation). Filters are returned laid out for :func:`torch.nn.functional.conv2d`, which
computes a cross-correlation: correlating with ``gaussian_basis(...)[m]`` *is* convolving with the derivative
filter, so odd orders keep the sign of the true derivative.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "MAX_ORDER", "BasisOrder", "axis_orders", "basis_orders", "basis_size", "compose_basis", "describe_basis",
    "filter_radius",
    "gaussian_basis", "gaussian_derivatives_1d", "is_tensor_basis",
]

# Largest derivative order along one axis: float32 Hermite factors reach ~1e4 at order 12, ~2e6 at 16, overflow to
# NaN near 50. A tensor-product basis of per-axis order 12 spans every kernel up to 13×13.
MAX_ORDER = 12

BasisOrder = int | tuple[int, int]
"""Which Gaussian derivatives a layer combines (docs/design.md, "Basis index sets"):

* ``n`` (an int): the paper's jet, every ``(i, j)`` with ``i + j <= n`` — ``(n + 1)(n + 2) / 2`` filters;
* ``(n_x, n_y)``: the tensor product, every ``(i, j)`` with ``i <= n_x`` and ``j <= n_y`` — ``(n_x + 1)(n_y + 1)``
  filters, which span every ``(n_x + 1)×(n_y + 1)`` kernel exactly (no null space, no aliasing).
"""


def is_tensor_basis(order: BasisOrder) -> bool:
    """Whether ``order`` names a tensor-product index set ``(n_x, n_y)`` rather than the paper's jet."""
    return not isinstance(order, int)


def axis_orders(order: BasisOrder) -> tuple[int, int]:
    """Highest derivative order along x and along y that the index set uses: ``(n, n)`` for the jet of order n."""
    _check_order(order)
    if isinstance(order, int):
        return order, order
    return int(order[0]), int(order[1])


def basis_orders(order: BasisOrder) -> list[tuple[int, int]]:
    """Derivative orders ``(i, j)`` (``i`` along x = width, ``j`` along y = height) of the index set ``order``.

    This is the order of the last axis of ``NJetConv2d.alpha`` and of the first axis of :func:`gaussian_basis`.
    The jet: by total degree, then by decreasing ``i`` — ``[(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2), ...]``.
    The tensor product ``(n_x, n_y)``: row-major in ``(j, i)`` — ``[(0, 0), (1, 0), ..., (n_x, 0), (0, 1), ...]``, so
    α viewed as ``[..., n_y + 1, n_x + 1]`` is the separable coefficient matrix.
    """
    _check_order(order)
    if isinstance(order, int):
        return [(n - j, j) for n in range(order + 1) for j in range(n + 1)]
    n_x, n_y = order
    return [(i, j) for j in range(n_y + 1) for i in range(n_x + 1)]


def basis_size(order: BasisOrder) -> int:
    """Number of basis filters: ``(n + 1)(n + 2) / 2`` for the jet, ``(n_x + 1)(n_y + 1)`` for a tensor product."""
    _check_order(order)
    if isinstance(order, int):
        return (order + 1) * (order + 2) // 2
    return (order[0] + 1) * (order[1] + 1)


def describe_basis(order: BasisOrder) -> str:
    """Short human name of an index set: ``"jet 3"`` or ``"tensor 3x3"`` (per-axis filter counts)."""
    _check_order(order)
    if isinstance(order, int):
        return f"jet {order}"
    return f"tensor {order[0] + 1}x{order[1] + 1}"


def filter_radius(sigma: float | Tensor, k: float = 2.0, max_radius: int | None = None) -> int:
    """Half-width ``R = ceil(k * sigma)`` of the sampled filter (size ``2R + 1``), optionally capped."""
    value = (float(sigma.detach()) if torch.is_tensor(sigma) else float(sigma)) * float(k)
    # Guard against float noise such as 2 * 0.7500000001 becoming radius 2 instead of the intended 1.5 -> 2.
    radius = max(1, math.ceil(value - 1e-9))
    return radius if max_radius is None else min(radius, max_radius)


def gaussian_derivatives_1d(order: int, sigma: Tensor | float, radius: int) -> Tensor:
    """Scale-normalised 1-D Gaussian derivatives of orders ``0..order`` on ``-radius..radius``, correlation layout.

    Row ``m`` is ``sigma**m * d^m G / dx^m`` flipped (so that ``conv2d`` applies the derivative); returns
    ``[order + 1, 2 * radius + 1]``, differentiable in ``sigma``.
    """
    sigma_t = torch.as_tensor(sigma, dtype=torch.get_default_dtype() if not torch.is_tensor(sigma) else None)
    x = torch.arange(-radius, radius + 1, dtype=sigma_t.dtype, device=sigma_t.device)
    gauss = torch.exp(-0.5 * (x / sigma_t) ** 2)
    gauss = gauss / gauss.sum()
    # sigma^m d^m/dx^m G = (-1)^m He_m(x / sigma) G, with He the probabilists' Hermite polynomials (equal to
    # the physicists' form (-1/(sigma*sqrt2))^m H_m(x/(sigma*sqrt2)) of the paper). Flipping x for correlation
    # cancels the (-1)^m, leaving He_m(x / sigma) G.
    t = x / sigma_t
    rows = [torch.ones_like(t)]
    if order >= 1:
        rows.append(t)
    for m in range(2, order + 1):
        rows.append(t * rows[m - 1] - (m - 1) * rows[m - 2])
    return torch.stack(rows[: order + 1]) * gauss


def gaussian_basis(
    order: BasisOrder,
    sigma: Tensor | float,
    k: float = 2.0,
    *,
    radius: int | None = None,
) -> Tensor:
    """The ``M`` two-dimensional basis filters ``[M, s, s]`` of the index set ``order`` at scale ``sigma``.

    Differentiable in σ.

    ``basis[m]`` for ``(i, j) = basis_orders(order)[m]`` is the outer product of the 1-D order-``j`` filter along
    y and the order-``i`` filter along x; ``s = 2 * ceil(k * sigma) + 1`` unless ``radius`` is given.
    """
    _check_order(order)
    _check_positive("k", k)
    _check_positive("sigma", float(sigma.detach()) if torch.is_tensor(sigma) else float(sigma))
    if radius is None:
        radius = filter_radius(sigma, k)
    g = gaussian_derivatives_1d(max(axis_orders(order)), sigma, radius)
    return compose_basis(order, g, g)


def compose_basis(order: BasisOrder, g_x: Tensor, g_y: Tensor) -> Tensor:
    """The ``[M, s, s]`` basis ``g_y[j] ⊗ g_x[i]`` for the pairs ``(i, j)`` of :func:`basis_orders`."""
    pairs = basis_orders(order)
    idx_x = torch.tensor([i for i, _ in pairs], device=g_x.device)
    idx_y = torch.tensor([j for _, j in pairs], device=g_x.device)
    return g_y[idx_y][:, :, None] * g_x[idx_x][:, None, :]


def _check_order(order: BasisOrder) -> None:
    if isinstance(order, tuple | list):
        if len(order) != 2 or any(not _is_count(n) for n in order):
            raise ValueError(f"a tensor-product order must be a pair (n_x, n_y) of non-negative ints, got {order!r}")
        if max(order) > MAX_ORDER:
            raise ValueError(f"per-axis orders must be at most {MAX_ORDER} (kernels up to {MAX_ORDER + 1}x"
                             f"{MAX_ORDER + 1}), got {tuple(order)}: higher orders lose float32 precision")
        return
    if not _is_count(order):
        raise ValueError(f"order must be a non-negative integer or a pair (n_x, n_y), got {order!r}")
    if order > MAX_ORDER:
        raise ValueError(f"order must be at most {MAX_ORDER}, got {order}: higher orders lose float32 precision "
                         "(the paper uses 2..4)")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_positive(name: str, value: float) -> None:
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
