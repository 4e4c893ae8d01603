"""The lossless fit of ``order="exact"``: a conv's kernels in the tensor-product basis that spans its frame.

With as many basis filters as the frame has taps and no null space, the least-squares fit is the unique solution
of a square system: exact in float64 by construction, no σ search for the error and no calibration to improve it
(docs/design.md, "Lossless conversion"). σ₀ is the scale, among those whose filter frame is the kernel's, at which
the 1-D Gaussian derivatives are best conditioned on that frame (the basis filters most distinct); the layer's
per-axis mix is anchored there, so α is expressed in a basis that is orthonormal at σ₀ and float32 composes it
accurately even for 7×7 and larger kernels.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from njet_layers import NJetConv2d, filter_radius
from njet_layers.axis_filters import axis_filters
from njet_layers.basis import axis_orders, compose_basis, gaussian_derivatives_1d, is_tensor_basis
from njet_layers.scale import DEFAULT_SIGMA_BOUNDS

from .kernel_fit import KernelFit, set_sigma
from .placement import embed_kernel

__all__ = ["exact_sigma", "fit_exact"]

_STEPS = 64  # σ candidates per admissible interval
_MARGIN = 0.05  # keep σ₀ this fraction inside its interval, so float32 rounding cannot change the filter size


@functools.lru_cache(maxsize=64)
def exact_sigma(radius: int, order: int, k: float) -> float:
    """The σ with filter radius ``radius`` at which the 1-D derivatives of orders ``0..order`` are best
    conditioned on the ``2 * radius + 1`` taps; ``ValueError`` when no σ of the default bounds has that radius."""
    lo, hi = (radius - 1) / k, radius / k
    grid = [lo + (hi - lo) * (_MARGIN + (1 - 2 * _MARGIN) * i / (_STEPS - 1)) for i in range(_STEPS)]
    low, high = DEFAULT_SIGMA_BOUNDS
    grid = [s for s in grid if low <= s <= high and filter_radius(s, k) == radius]
    if not grid:
        raise ValueError(f"order 'exact' needs a σ whose filter radius ceil({k:g} σ) is {radius}, but none lies in "
                         f"the layers' σ bounds {DEFAULT_SIGMA_BOUNDS}: use a smaller k (the paper uses 2)")
    conds = [torch.linalg.cond(gaussian_derivatives_1d(order, torch.tensor(s, dtype=torch.float64), radius))
             for s in grid]
    return grid[int(torch.stack(conds).argmin())]


@torch.no_grad()
def fit_exact(layer: NJetConv2d, weight: Tensor) -> KernelFit:
    """Set ``layer`` (a tensor-basis NJetConv2d whose basis spans the kernel's frame, with the conv's dilation as
    its tap spacing) to σ₀ with its mix anchored there, and return the α that reproduce ``weight [O, I/g, kh, kw]``:
    the fit is exact up to rounding."""
    if not is_tensor_basis(layer.order):
        raise ValueError(f"fit_exact needs a tensor-product basis, the layer has {layer.basis_name}")
    n_x, n_y = axis_orders(layer.order)
    radius = n_x // 2
    if n_x != n_y or n_x != 2 * radius:
        raise ValueError(f"fit_exact needs a square basis spanning a whole odd frame, got {layer.basis_name}")
    set_sigma(layer, exact_sigma(radius, n_x, layer.k))
    if layer.radius != radius:
        raise ValueError(f"σ₀ {float(layer.sigma):.6g} gives a {layer.kernel_size}-tap filter, not {2 * radius + 1}")
    layer.orthonormalize_basis_()
    basis = compose_basis(layer.order, *axis_filters(layer.order, layer.sigma.double(), radius, layer.mixes))
    flat = basis.reshape(basis.shape[0], -1)  # [M, M]: square and invertible
    target = embed_kernel(weight.detach().double(), radius).reshape(-1, flat.shape[1])
    alpha = torch.linalg.solve(flat.T, target.T).T
    norm = target.norm()
    error = float((alpha @ flat - target).norm() / norm) if norm > 0 else 0.0
    singular = torch.linalg.svdvals(flat)
    return KernelFit(alpha=alpha.reshape(layer.alpha.shape).to(weight), sigma=float(layer.sigma),
                     error=error, condition=float(singular[0] / singular[-1]), rank=flat.shape[0], fragile=0.0)
