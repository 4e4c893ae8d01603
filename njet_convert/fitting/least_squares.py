"""Plain least-squares fit of a layer's kernels in the N-Jet basis, batched over all kernels in closed form.

The σ search needs no fit per σ: with ``T [N, P]`` the kernels zero-padded into the filter's frame and ``Q`` the
projection onto the span of that σ's basis (``Q = pinv(B) B``), the squared residual of the least-squares fit is
``tr((I - Q) TᵀT)``. ``TᵀT`` is a small Gram matrix of the kernels' own taps (``kh·kw`` square, once per layer) and
zero-padding only embeds it into the frame, so every σ costs a P×P product. The chosen σ is then fitted once:
``α = T E pinv(B)`` with ``E`` placing the taps in the frame (a 512×512×3×3 layer: 0.014 s instead of 0.79 s).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from njet_layers import basis_size, filter_radius, gaussian_basis

from .kernel_fit import KernelFit, basis_conditioning
from .placement import embed_kernel, kernel_radius
from .sigma_search import default_sigma_grid

__all__ = ["fit_at_sigma", "fit_kernels", "lstsq_alpha", "sigma_errors"]

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
    taps, gram = _layer_gram(weight)
    ops = [_operators(tuple(weight.shape[-2:]), order, k, s, dilation) for s in grid]
    errors = [_error(gram, *op) for op in ops]
    best = min(errors)
    ties = [i for i, e in enumerate(errors) if e <= best + _TIE_TOLERANCE]
    i = min(ties, key=lambda j: (filter_radius(grid[j], k), -grid[j]))
    place, basis, pinv = ops[i]
    flat = taps @ (place @ pinv)
    condition, rank, fragile = basis_conditioning(basis, flat)
    alpha = flat.reshape(*weight.shape[:2], -1)
    return KernelFit(alpha=alpha.to(torch.float32).to(weight.device), sigma=grid[i], error=errors[i],
                     condition=condition, rank=rank, fragile=fragile)


def sigma_errors(weight: Tensor, order: int, k: float, grid: Sequence[float],
                 dilation: tuple[int, int] = (1, 1)) -> list[float]:
    """Relative Frobenius error ``||W - fit||/||W||`` of the least-squares fit at each σ of ``grid``."""
    _, gram = _layer_gram(weight)
    return [_error(gram, *_operators(tuple(weight.shape[-2:]), order, k, s, dilation)) for s in grid]


def fit_at_sigma(weight: Tensor, order: int, k: float, sigma: float, dilation: tuple[int, int] = (1, 1)) -> KernelFit:
    """The fit at one σ computed directly on the kernels zero-padded into the frame: the reference that
    :func:`fit_kernels` is tested against (memory O(kernels × frame²): avoid for large dilated layers)."""
    need = kernel_radius(tuple(weight.shape[-2:]), dilation)
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


def _layer_gram(weight: Tensor) -> tuple[Tensor, Tensor]:
    kh, kw = weight.shape[-2:]
    taps = weight.detach().reshape(-1, kh * kw).to(torch.float64)
    return taps, taps.T @ taps  # [N, q], [q, q]


def _operators(shape: tuple[int, int], order: int, k: float, sigma: float,
               dilation: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """For one σ: where each kernel tap lands in the frame ``E [q, P]``, the basis ``B [M, P]`` and ``pinv(B)``."""
    kh, kw = shape
    radius = filter_radius(sigma, k)
    frame = max(radius, kernel_radius(shape, dilation))
    eye = torch.eye(kh * kw, dtype=torch.float64).reshape(kh * kw, kh, kw)
    place = embed_kernel(eye, frame, dilation).reshape(kh * kw, -1)
    basis = gaussian_basis(order, torch.tensor(float(sigma), dtype=torch.float64), k, radius=radius)
    basis = embed_kernel(basis, frame).reshape(basis.shape[0], -1)
    return place, basis, torch.linalg.pinv(basis.T, rtol=1e-10).T  # pinv as in lstsq_alpha


def _error(gram: Tensor, place: Tensor, basis: Tensor, pinv: Tensor) -> float:
    total = float(gram.trace())
    if total <= 0:
        return 0.0
    kept = float(((place @ pinv @ basis @ place.T) * gram).sum())  # tr(Q Eᵀ G E), Q = pinv(B) B
    return max(total - kept, 0.0) ** 0.5 / total ** 0.5


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
