"""The 1-D filters a layer's basis is built from, and the fixed per-axis mix that keeps a tensor basis well posed.

Every N-Jet basis filter is an outer product ``g_j(y) · g_i(x)`` of two 1-D Gaussian derivatives. A tensor-product
index set (docs/design.md, "Basis index sets") spans every kernel of its size exactly, but on ``s`` taps the 1-D
derivatives of orders ``0..s-1`` are as ill-conditioned as a Vandermonde matrix (condition number of the 2-D basis
~14 for 3×3, ~1e2 for 5×5, ~1e4 for 7×7, ~1e6 for 9×9): α then carries large, cancelling values that float32 cannot
compose accurately. A fixed invertible ``[n + 1, n + 1]`` matrix per axis, ``mix``, re-mixes the 1-D derivatives
into rows that are orthonormal at one scale σ₀ (:func:`orthonormal_mix`). A layer stores only the anchor
``(σ₀, radius)`` (as integers, so no dtype cast can perturb it) and forms the mix from it in float64. The span is
the same at every σ — each mixed row is still a combination of Gaussian derivatives of the learned σ — so σ keeps
its meaning, α becomes well conditioned, and the kernel is unchanged when the mix changes and α is re-expressed
(:func:`remix_alpha`). The paper's jet is not mixed: re-mixing its 1-D rows would change its span.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .basis import BasisOrder, axis_orders, gaussian_derivatives_1d

__all__ = [
    "ANCHOR_UNIT", "anchor_sigma", "anchored_mix", "axis_filters", "orthonormal_mix", "remix_alpha",
]

Mixes = tuple[Tensor, Tensor]  # (mix_x, mix_y)


def axis_filters(order: BasisOrder, sigma: Tensor | float, radius: int, mixes: Mixes | None = None) -> Mixes:
    """The 1-D filters ``(g_x [n_x + 1, s], g_y [n_y + 1, s])`` of the index set at ``sigma``, mixed when given.

    Correlation layout as in :func:`~njet_layers.gaussian_derivatives_1d`; differentiable in σ; in σ's dtype.
    Row ``i`` of ``g_x`` is the filter that basis pairs ``(i, ·)`` use along x.
    """
    n_x, n_y = axis_orders(order)
    if mixes is None:
        g = gaussian_derivatives_1d(max(n_x, n_y), sigma, radius)
        return g[: n_x + 1], g[: n_y + 1]
    # mixed rows are sums of large, cancelling terms for big kernels: form them in float64 (they are tiny)
    dtype = sigma.dtype if torch.is_tensor(sigma) else torch.get_default_dtype()
    g = gaussian_derivatives_1d(max(n_x, n_y), torch.as_tensor(sigma).double(), radius)
    g_x, g_y = mixes[0].double() @ g[: n_x + 1], mixes[1].double() @ g[: n_y + 1]
    return g_x.to(dtype), g_y.to(dtype)


ANCHOR_UNIT = 2.0**-40  # σ₀ is stored as an integer multiple of this: exact, and immune to dtype casts


def anchor_sigma(sigma: float) -> int:
    """σ₀ in units of :data:`ANCHOR_UNIT` (what ``NJetConv2d.basis_anchor`` stores)."""
    return round(float(sigma) / ANCHOR_UNIT)


@functools.lru_cache(maxsize=256)
def _mix_cpu(num: int, sigma_units: int, radius: int) -> Tensor:
    return orthonormal_mix(num, sigma_units * ANCHOR_UNIT, radius)


def anchored_mix(num: int, sigma_units: int, radius: int, device: torch.device) -> Tensor:
    """:func:`orthonormal_mix` at the anchored σ₀ (cached), on ``device``."""
    return _mix_cpu(num, sigma_units, radius).to(device)


@torch.no_grad()
def orthonormal_mix(num: int, sigma: float, radius: int) -> Tensor:
    """A ``[num, num]`` float64 matrix ``L`` whose product with the 1-D derivatives ``0..num-1`` at ``sigma`` on
    ``2 * radius + 1`` taps has orthonormal rows (``L = chol(G Gᵀ)⁻¹``; lower triangular, so mixed row ``m`` only
    uses derivatives up to order ``m``)."""
    g = gaussian_derivatives_1d(num - 1, torch.tensor(float(sigma), dtype=torch.float64), radius)
    chol = torch.linalg.cholesky(g @ g.T)
    eye = torch.eye(num, dtype=torch.float64)
    return torch.linalg.solve_triangular(chol, eye, upper=False)  # type: ignore[no-any-return]


@torch.no_grad()
def remix_alpha(alpha: Tensor, order: tuple[int, int], old: Mixes, new: Mixes) -> Tensor:
    """α re-expressed so that ``Σ α·basis`` is unchanged when the per-axis mixes go from ``old`` to ``new``.

    The kernel is ``(M_y G_y)ᵀ A (M_x G_x)`` with ``A = α.view(..., n_y + 1, n_x + 1)``, so
    ``A' = M'_y⁻ᵀ M_yᵀ A M_x M'_x⁻¹`` (computed in float64).
    """
    n_x, n_y = order
    a = alpha.detach().double().reshape(*alpha.shape[:-1], n_y + 1, n_x + 1)
    left = torch.linalg.solve(new[1].double().T, old[1].double().T)  # M'_y⁻ᵀ M_yᵀ
    right = torch.linalg.solve(new[0].double().T, old[0].double().T).T  # M_x M'_x⁻¹
    return (left @ a @ right).reshape(alpha.shape).to(alpha.dtype)  # type: ignore[no-any-return]
