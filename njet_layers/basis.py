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

__all__ = ["MAX_ORDER", "basis_orders", "basis_size", "filter_radius", "gaussian_basis", "gaussian_derivatives_1d"]

# Largest basis order: float32 Hermite factors reach ~1e4 at order 12, ~2e6 at 16, overflow to NaN near 50.
MAX_ORDER = 12


def basis_orders(order: int) -> list[tuple[int, int]]:
    """Derivative orders ``(i, j)`` (``i`` along x = width, ``j`` along y = height) with ``i + j <= order``.

    This is the order of the last axis of ``NJetConv2d.alpha`` and of the first axis of :func:`gaussian_basis`:
    by total degree, then by decreasing ``i`` — ``[(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2), ...]``.
    """
    _check_order(order)
    return [(n - j, j) for n in range(order + 1) for j in range(n + 1)]


def basis_size(order: int) -> int:
    """Number of basis filters for ``order``: ``(order + 1)(order + 2) / 2``."""
    _check_order(order)
    return (order + 1) * (order + 2) // 2


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
    order: int,
    sigma: Tensor | float,
    k: float = 2.0,
    *,
    radius: int | None = None,
) -> Tensor:
    """The ``M`` two-dimensional basis filters ``[M, s, s]`` for ``order`` at scale ``sigma``, differentiable in σ.

    ``basis[m]`` for ``(i, j) = basis_orders(order)[m]`` is the outer product of the 1-D order-``j`` filter along
    y and the order-``i`` filter along x; ``s = 2 * ceil(k * sigma) + 1`` unless ``radius`` is given.
    """
    _check_order(order)
    _check_positive("k", k)
    _check_positive("sigma", float(sigma.detach()) if torch.is_tensor(sigma) else float(sigma))
    if radius is None:
        radius = filter_radius(sigma, k)
    g = gaussian_derivatives_1d(order, sigma, radius)
    idx_x = torch.tensor([i for i, _ in basis_orders(order)], device=g.device)
    idx_y = torch.tensor([j for _, j in basis_orders(order)], device=g.device)
    return g[idx_y][:, :, None] * g[idx_x][:, None, :]


def _check_order(order: int) -> None:
    if not isinstance(order, int) or isinstance(order, bool) or order < 0:
        raise ValueError(f"order must be a non-negative integer, got {order!r}")
    if order > MAX_ORDER:
        raise ValueError(f"order must be at most {MAX_ORDER}, got {order}: higher orders lose float32 precision "
                         "(the paper uses 2..4)")


def _check_positive(name: str, value: float) -> None:
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
