"""Plain least-squares fit of a layer's kernels in the N-Jet basis, batched over all kernels in closed form."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from njet_layers import basis_size, filter_radius, gaussian_basis

from .kernel_fit import KernelFit
from .placement import embed_kernel, kernel_radius
from .sigma_search import default_sigma_grid

__all__ = ["fit_kernels", "lstsq_alpha"]

# Fits whose error is within this (relative) tolerance of the best count as equally good; among them the smallest
# filter and then the largest σ win (larger σ: better-conditioned basis, smaller α).
_TIE_TOLERANCE = 1e-5


def fit_kernels(
    weight: Tensor,
    order: int,
    k: float = 2.0,
    *,
    sigma: float | None = None,
    sigma_grid: Sequence[float] | None = None,
    dilation: tuple[int, int] = (1, 1),
) -> KernelFit:
    """Least-squares basis weights for every kernel of a conv layer, with σ chosen to minimise the fit error.

    ``weight [O, I/g, kh, kw]`` (any kernel size, even or non-square; pass the effective weight, e.g. the
    standardised one of a weight-standardised conv) is zero-padded into the filter's s×s frame (see
    :mod:`.placement` for the centring of even kernels); a filter smaller than the kernel is compared against the
    whole kernel, so the taps it cannot reach count as error. All kernels share one basis, so the fit is a single
    pseudo-inverse applied to all of them. ``error`` is ``||W - fit||_F / ||W||_F`` over the layer.
    """
    _check_weight(weight)
    basis_size(order)  # validates order
    if not k > 0:
        raise ValueError(f"k must be positive, got {k!r}")
    need = kernel_radius(tuple(weight.shape[-2:]), dilation)
    if sigma is not None:
        grid = [float(sigma)]
    elif sigma_grid is not None:
        grid = [float(s) for s in sigma_grid]
        if not grid or any(not s > 0 for s in grid):
            raise ValueError(f"sigma_grid must hold positive values, got {list(sigma_grid)!r}")
    else:
        grid = default_sigma_grid(need, k)
    fits = [_fit_at(weight, order, k, s, need, dilation) for s in grid]
    best = min(f.error for f in fits)
    ties = [f for f in fits if f.error <= best + _TIE_TOLERANCE]
    return min(ties, key=lambda f: (filter_radius(f.sigma, k), -f.sigma))


def _fit_at(weight: Tensor, order: int, k: float, sigma: float, need: int, dilation: tuple[int, int]) -> KernelFit:
    radius = filter_radius(sigma, k)
    frame = max(radius, need)
    basis = gaussian_basis(order, torch.tensor(sigma, dtype=torch.float64), k, radius=radius)
    basis = embed_kernel(basis, frame)  # [M, S, S]
    target = embed_kernel(weight.detach().to(torch.float64), frame, dilation)  # [O, I, S, S]
    flat = target.reshape(-1, target.shape[-1] ** 2)
    alpha = lstsq_alpha(basis.reshape(basis.shape[0], -1), flat)
    residual = flat - alpha @ basis.reshape(basis.shape[0], -1)
    norm = flat.norm()
    error = float(residual.norm() / norm) if norm > 0 else 0.0
    alpha = alpha.reshape(*weight.shape[:2], -1).to(torch.float32)
    return KernelFit(alpha=alpha.to(weight.device), sigma=float(sigma), error=error)


def lstsq_alpha(basis: Tensor, targets: Tensor) -> Tensor:
    """Minimum-norm ``alpha [N, M]`` minimising ``||targets - alpha @ basis||`` for ``basis [M, P]``, all N at once.

    The basis can be rank-deficient (order 3 on a 3×3 support spans 8 of 9 dimensions; order 4 has 15 filters
    for 9 pixels): the pseudo-inverse gives the minimum-norm solution, computed once for all kernels.
    """
    pinv = torch.linalg.pinv(basis.to(torch.float64).T, rtol=1e-10)  # [M, P]
    return targets.to(torch.float64) @ pinv.T


def _check_weight(weight: Tensor) -> None:
    if not torch.is_tensor(weight) or weight.dim() != 4:
        shape = tuple(weight.shape) if torch.is_tensor(weight) else type(weight).__name__
        raise ValueError(f"weight must be a 4-d conv weight [out, in/groups, kh, kw], got {shape}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
