"""The α that make a jet layer's σ a scale: its kernel dilated, refitted at the new σ.

Why: on a tensor-product basis a σ move with α kept dilates the kernel (docs/design.md, "Resolution learning from
a converted start"), so the resolution search can double a stage's σ and its subsampling factor and the layers
after it see the maps they were trained on. The paper's jet cannot do that with α kept where it is over-complete:
a converted jet's α are minimum-norm coefficients in directions that alias on 3 taps, and the filter they compose at
2σ is not the filter at σ dilated (the order-3 MNIST CNN on digits at 2×, first stage's σ and factor doubled: 21.7 %
test accuracy; the tensor basis: 94.4 %). This module gives the jet that move where it needs it
(:func:`dilates_by_refit`): the kernel's own taps, read as the smooth tensor-basis filter through them (an exact
fit), dilated by the ratio of the σ, and fitted back onto the jet at the new σ by least squares (the same digits:
92.7 %).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from njet_layers import NJetConv2d, gaussian_basis
from njet_layers.basis import basis_size, is_tensor_basis

from .exact_fit import fit_exact
from .least_squares import fit_at_sigma

__all__ = ["dilated_alpha", "dilates_by_refit"]


def dilates_by_refit(layer: NJetConv2d) -> bool:
    """Whether a σ move of ``layer`` needs :func:`dilated_alpha` to dilate its kernel: the paper's jet with at least
    as many filters as its kernel has taps (order 3 on 3×3), with unit tap spacing.

    Why that rule: where the jet is over-complete its α have a null space, the fit picks them by norm, not by
    smoothness, and the continuous filter they compose is not the one the taps describe. Where it has fewer filters
    than taps (order 3 on 5×5, a network built new at σ = 1) the jet's own σ is a scale: α kept dilates the kernel
    as well as the refit does or better (21 converted layers of the MNIST CNN and MobileNetV2, docs/design.md: on 3×3
    the refit's dilation error is below α kept's in 13 of 15 layers; on 5×5 both read 0.02–0.05). A tensor basis
    dilates with α kept; dilated taps (the lossless conversion's) are left as they are.
    """
    return _unit_jet(layer) and basis_size(layer.order) >= layer.kernel_size**2


def dilated_alpha(layer: NJetConv2d, alpha: Tensor, sigma: float, new_sigma: float) -> Tensor:
    """α of ``layer`` (the paper's jet) at ``new_sigma`` whose kernel is, in least squares, the kernel ``alpha``
    compose at ``sigma`` dilated by ``new_sigma / sigma``; in ``alpha``'s dtype and device."""
    if not _unit_jet(layer):
        raise ValueError(f"dilated_alpha is for the paper's jet with unit tap spacing, not {layer.basis_name}")
    kernel = _jet_kernel(layer, alpha, sigma)
    target = _dilated(kernel, layer.k, new_sigma / sigma)
    return fit_at_sigma(target, layer.order, layer.k, new_sigma).alpha.to(alpha)


def _unit_jet(layer: NJetConv2d) -> bool:
    return not is_tensor_basis(layer.order) and tuple(layer.dilation) == (1, 1)


def _jet_kernel(layer: NJetConv2d, alpha: Tensor, sigma: float) -> Tensor:
    """The kernel ``[O, I/g, s, s]`` (float64) that ``alpha`` composes on ``layer``'s jet at ``sigma``."""
    radius = layer.radius_at(sigma)
    basis = gaussian_basis(layer.order, torch.tensor(sigma, dtype=torch.float64), layer.k, radius=radius)
    return torch.einsum("oim,mhw->oihw", alpha.detach().cpu().double(), basis)


def _dilated(kernel: Tensor, k: float, scale: float) -> Tensor:
    """``kernel [O, I/g, s, s]`` read as the tensor-basis filter through its taps, at ``scale`` times its σ."""
    out_ch, in_ch, size, _ = kernel.shape
    flat = kernel.reshape(out_ch * in_ch, 1, size, size)
    smooth = NJetConv2d(1, out_ch * in_ch, order=(size - 1, size - 1), k=k).double()
    fit = fit_exact(smooth, flat)
    with torch.no_grad():
        smooth.alpha.copy_(fit.alpha)
        smooth.log_sigma += math.log(scale)
    dilated = smooth.kernel().detach()
    return dilated.reshape(out_ch, in_ch, *dilated.shape[-2:]).float()
