"""The plain (calibration-free) fit of one conv for the surgery, with a cheap σ search.

:func:`njet_convert.fitting.fit_kernels` fits every σ of its grid on the full weight tensor (embed, pseudo-inverse,
residual) and keeps the best one; for a 512×512×3×3 layer and eight σ that is most of a ResNet-50 conversion.
The fit error of a σ needs far less: with ``T [N, P]`` the kernels zero-padded into the filter's frame and ``Q`` the
projection onto the span of that σ's basis (``Q = pinv(B) B``), the squared residual of the least-squares fit is
``tr((I - Q) TᵀT)``. ``TᵀT`` is a small Gram matrix of the kernels' own taps (``kh·kw`` square, computed once per
layer) and zero-padding only embeds it into the larger frame, so every σ costs a P×P product. The chosen σ (same
grid, same error, same tie rule as ``fit_kernels``) is then fitted once: ``α = T E pinv(B)`` with ``E`` placing the
taps in the frame, again without building the padded ``[N, P]`` tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from njet_layers import filter_radius, gaussian_basis

from ..fitting import KernelFit, embed_kernel, kernel_radius
from ..fitting.sigma_search import default_sigma_grid

__all__ = ["fit_conv", "sigma_errors"]

_TIE_TOLERANCE = 1e-5  # as in fitting.least_squares: errors this close count as equal


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
    pinv = torch.linalg.pinv(basis.T, rtol=1e-10).T  # [P, M], as fitting.least_squares.lstsq_alpha
    return place, basis, pinv


def _error(gram: Tensor, place: Tensor, basis: Tensor, pinv: Tensor) -> float:
    total = float(gram.trace())
    if total <= 0:
        return 0.0
    kept = float(((place @ pinv @ basis @ place.T) * gram).sum())  # tr(Q Eᵀ G E), Q = pinv(B) B
    return max(total - kept, 0.0) ** 0.5 / total ** 0.5


def sigma_errors(weight: Tensor, order: int, k: float, grid: Sequence[float],
                 dilation: tuple[int, int] = (1, 1)) -> list[float]:
    """Relative Frobenius error ``||W - fit||/||W||`` of the plain least-squares fit at each σ of ``grid``."""
    _, gram = _layer_gram(weight)
    shape = tuple(weight.shape[-2:])
    return [_error(gram, *_operators(shape, order, k, s, dilation)) for s in grid]


def fit_conv(weight: Tensor, order: int, k: float, sigma_grid: Sequence[float] | None = None,
             dilation: tuple[int, int] = (1, 1)) -> KernelFit:
    """What ``fit_kernels(weight, order, k, sigma_grid=..., dilation=...)`` returns (same σ, α and error up to
    float64 rounding), without embedding the full weight tensor once per σ."""
    shape = tuple(weight.shape[-2:])
    grid = [float(s) for s in sigma_grid] if sigma_grid is not None else \
        default_sigma_grid(kernel_radius(shape, dilation), k)
    taps, gram = _layer_gram(weight)
    ops = [_operators(shape, order, k, s, dilation) for s in grid]
    errors = [_error(gram, *op) for op in ops]
    best = min(errors)
    ties = [i for i, e in enumerate(errors) if e <= best + _TIE_TOLERANCE]
    i = min(ties, key=lambda j: (filter_radius(grid[j], k), -grid[j]))
    place, _, pinv = ops[i]
    alpha = (taps @ (place @ pinv)).reshape(*weight.shape[:2], -1)
    return KernelFit(alpha=alpha.to(torch.float32).to(weight.device), sigma=grid[i], error=errors[i])
