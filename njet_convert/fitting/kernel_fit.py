"""The result of fitting one layer's kernels in the N-Jet basis, and how it is written into the layer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from njet_layers import NJetConv2d, gaussian_basis
from njet_layers.scale import DEFAULT_SIGMA_BOUNDS

__all__ = ["FRAGILE_RTOL", "KernelFit", "basis_conditioning", "layer_conditioning", "set_sigma"]

FRAGILE_RTOL = 1e-3  # singular values below this fraction of the largest amplify α (and float32 rounding) 1000×


@dataclass
class KernelFit:
    """Basis weights, scale, error and conditioning of one layer's fit.

    Attributes:
        alpha: ``[out, in / groups, M]`` float32 basis weights (the ``alpha`` of an ``NJetConv2d``).
        sigma: the scale σ the weights belong to (it also sets the filter size ``2 * ceil(k * sigma) + 1``).
        error: relative L2 error of the fitted kernels vs the originals; after calibration, the relative error of
            the layer's output on the calibration data (data-weighted).
        condition: condition number of the basis the fit solved in, over the directions it used.
        rank: numerical rank of that basis (``M`` when every basis filter is independent on the frame).
        fragile: share of ``||α||²`` along directions the basis holds with a singular value below
            ``FRAGILE_RTOL`` of its largest: α that is large, cancels at the fitted σ and dominates once σ moves
            (docs/design.md, "Lossless conversion").
    """

    alpha: Tensor
    sigma: float
    error: float
    condition: float = math.nan
    rank: int = -1
    fragile: float = math.nan

    @torch.no_grad()
    def apply_to(self, layer: NJetConv2d) -> None:
        """Write σ and α into ``layer`` (see :func:`set_sigma`)."""
        set_sigma(layer, self.sigma)
        layer.alpha.copy_(self.alpha.reshape(layer.alpha.shape).to(layer.alpha))


@torch.no_grad()
def set_sigma(layer: NJetConv2d, sigma: float) -> None:
    """Set ``layer``'s σ; its bounds become those a layer built at this σ gets by default (so a converted layer
    and the same layer rebuilt by ``load`` agree)."""
    lo, hi = DEFAULT_SIGMA_BOUNDS
    layer.sigma_bounds = (lo, max(hi, 2 * sigma))
    layer.log_sigma.copy_(torch.tensor(math.log(sigma), dtype=layer.log_sigma.dtype))


def basis_conditioning(basis: Tensor, alpha: Tensor, rtol: float = 1e-10) -> tuple[float, int, float]:
    """``(condition, rank, fragile)`` of a fit ``alpha [N, M]`` in ``basis [M, P]`` (see :class:`KernelFit`):
    the condition number over the directions above ``rtol`` (those the pseudo-inverse uses), the numerical rank,
    and the share of ``||α||²`` along directions below ``FRAGILE_RTOL``."""
    u, s, _ = torch.linalg.svd(basis.double(), full_matrices=False)
    rank = int((s > rtol * s[0]).sum())
    along = (alpha.double() @ u) ** 2  # [N, min(M, P)]
    total = float(along.sum())
    weak = float(along[:, s < FRAGILE_RTOL * s[0]].sum())
    return float(s[0] / s[rank - 1]), rank, weak / total if total > 0 else 0.0


@torch.no_grad()
def layer_conditioning(layer: NJetConv2d) -> tuple[float, int, float]:
    """:func:`basis_conditioning` of a jet layer's current α in its basis at its current σ and support (in float64),
    for fits made by other means than the least-squares fit (calibration)."""
    sigma = layer.sigma.detach().double().cpu()
    basis = gaussian_basis(layer.order, sigma, layer.k, radius=layer.radius)  # type: ignore[arg-type]
    alpha = layer.alpha.detach().double().cpu().flatten(0, 1)
    return basis_conditioning(basis.flatten(1), alpha)
