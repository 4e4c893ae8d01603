"""The dense kernel ``α · B(σ)`` as one autograd node, with the basis and its σ-derivative in closed form.

Composing the kernel through autograd records some forty tiny operations per layer (the Hermite recursion, the
normalisation, the per-axis mixes, the outer products) and replays them backwards every training step. On the
small maps of CIFAR networks that bookkeeping costs a third of the layer's convolution (docs/layer.md, "Kernel
composition"). Here the forward computes the basis ``B [M, s·s]`` and ``∂B/∂log σ`` under ``no_grad`` in float64,
and the backward is two matrix products and one dot product:

    ∂L/∂α = ∂L/∂K · Bᵀ          ∂L/∂log σ = ⟨αᵀ · ∂L/∂K, ∂B/∂log σ⟩

The σ-derivative of a scale-normalised Gaussian derivative ``g_m = He_m(t) Ĝ`` (``t = x/σ``, ``Ĝ`` the
normalised Gaussian) is ``Ĝ · (He_m(t) (t² − ⟨t²⟩_Ĝ) − m t He_{m−1}(t))``. The backward is built from
differentiable operations, so gradients of the σ-gradient with respect to the output gradient (the
``create_graph`` probe trick) work; second derivatives in σ itself are not provided.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .axis_filters import axis_filters
from .basis import BasisOrder, axis_orders, basis_orders, compose_basis, is_tensor_basis
from .scale import bounded_sigma

__all__ = ["compose_kernel", "compose_kernel_autograd", "gaussian_derivatives_1d_with_slope"]

Mixes = tuple[Tensor, Tensor]


def gaussian_derivatives_1d_with_slope(order: int, sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """``(g, ∂g/∂log σ)``, each ``[order + 1, 2 * radius + 1]`` float64: :func:`~njet_layers.gaussian_derivatives_1d`
    and its exact derivative (NumPy: on these few numbers it is several times quicker than tensor operations)."""
    t = np.arange(-radius, radius + 1, dtype=np.float64) / sigma
    t2 = t * t
    gauss = np.exp(-0.5 * t2)
    gauss /= gauss.sum()
    hermite = np.empty((order + 1, t.size))
    hermite[0] = 1.0
    if order >= 1:
        hermite[1] = t
    for m in range(2, order + 1):
        hermite[m] = t * hermite[m - 1] - (m - 1) * hermite[m - 2]
    lower = np.zeros_like(hermite)
    lower[1:] = np.arange(1, order + 1)[:, None] * t * hermite[:-1]
    spread = t2 - (gauss * t2).sum()
    return hermite * gauss, (hermite * spread - lower) * gauss


@functools.lru_cache(maxsize=64)
def _pair_index(order: BasisOrder) -> tuple[np.ndarray, np.ndarray]:
    pairs = basis_orders(order)
    return np.array([i for i, _ in pairs]), np.array([j for _, j in pairs])


def _basis_with_slope(order: BasisOrder, sigma: float, radius: int, mixes: Mixes | None) -> np.ndarray:
    """``[2, M, s·s]``: the basis of :func:`~njet_layers.compose_basis` and its derivative in log σ, float64."""
    n_x, n_y = axis_orders(order)
    g, dg = gaussian_derivatives_1d_with_slope(max(n_x, n_y), sigma, radius)
    g_x, g_y, dg_x, dg_y = g[: n_x + 1], g[: n_y + 1], dg[: n_x + 1], dg[: n_y + 1]
    if mixes is not None:
        mix_x, mix_y = (mix.detach().double().cpu().numpy() for mix in mixes)
        g_x, dg_x, g_y, dg_y = mix_x @ g_x, mix_x @ dg_x, mix_y @ g_y, mix_y @ dg_y
    idx_x, idx_y = _pair_index(order)
    gx, gy, dgx, dgy = g_x[idx_x][:, None, :], g_y[idx_y][:, :, None], dg_x[idx_x][:, None, :], dg_y[idx_y][:, :, None]
    return np.stack([gy * gx, dgy * gx + gy * dgx]).reshape(2, idx_x.size, -1)


class _ComposeKernel(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, alpha: Tensor, log_sigma: Tensor, bounds: tuple[float, float], order: BasisOrder,
                radius: int, mixes: Mixes | None) -> Tensor:
        lo, hi = bounds
        raw = float(log_sigma)
        sigma = math.exp(min(max(raw, lo), hi))
        both = torch.from_numpy(_basis_with_slope(order, sigma, radius, mixes)).to(alpha.device, alpha.dtype)
        basis, slope = both[0], both[1]
        out, in_per_group, m = alpha.shape
        ctx.save_for_backward(alpha, basis, slope)
        ctx.outside = -1 if raw < lo else (1 if raw > hi else 0)
        ctx.sigma_dtype = log_sigma.dtype
        size = 2 * radius + 1
        return (alpha.reshape(out * in_per_group, m) @ basis).reshape(out, in_per_group, size, size)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        alpha, basis, slope = ctx.saved_tensors
        flat_grad = grad.reshape(-1, basis.shape[1])
        flat_alpha = alpha.reshape(-1, basis.shape[0])
        grad_alpha = (flat_grad @ basis.T).reshape(alpha.shape) if ctx.needs_input_grad[0] else None
        grad_log_sigma = None
        if ctx.needs_input_grad[1]:
            grad_log_sigma = ((flat_alpha.T @ flat_grad) * slope).sum().to(ctx.sigma_dtype)
            # the inward clamp of njet_layers.scale: outside the bounds only a step back inside passes
            if ctx.outside and ctx.outside * float(grad_log_sigma) < 0:
                grad_log_sigma = grad_log_sigma * 0
        return grad_alpha, grad_log_sigma, None, None, None, None


def compose_kernel(alpha: Tensor, log_sigma: Tensor, sigma_bounds: tuple[float, float], order: BasisOrder,
                   radius: int, mixes: Mixes | None = None) -> Tensor:
    """The filters ``[O, I/g, s, s]`` ``α · B(σ)`` of an NJetConv2d, ``σ = exp(log σ)`` kept inside
    ``sigma_bounds`` as :func:`~njet_layers.scale.bounded_sigma` does; differentiable in α and log σ."""
    bounds = (math.log(sigma_bounds[0]), math.log(sigma_bounds[1]))
    return _ComposeKernel.apply(alpha, log_sigma, bounds, order, radius, mixes)  # type: ignore[no-any-return,no-untyped-call]


def compose_kernel_autograd(alpha: Tensor, log_sigma: Tensor, sigma_bounds: tuple[float, float], order: BasisOrder,
                            radius: int, mixes: Mixes | None = None) -> Tensor:
    """:func:`compose_kernel` built op by op through autograd: every derivative order, no host copies. The layer
    uses it off the CPU (where the node's host round trips are unmeasured); tests and
    ``benchmarks/kernel_compose.py`` hold the node against it."""
    sigma = bounded_sigma(log_sigma, sigma_bounds)
    g_x, g_y = (g.to(alpha.dtype) for g in axis_filters(order, sigma, radius, mixes))
    out, in_per_group, m = alpha.shape
    if is_tensor_basis(order):  # separable coefficients g_yᵀ · α · g_x: no M × s × s basis
        coeffs = alpha.reshape(out * in_per_group, g_y.shape[0], g_x.shape[0])
        return (g_y.T @ coeffs @ g_x).reshape(out, in_per_group, g_y.shape[1], g_x.shape[1])
    basis = compose_basis(order, g_x, g_y)
    # a plain matmul (not einsum) keeps α's gradient in α's own strides, as DDP's buckets expect
    return (alpha.reshape(-1, m) @ basis.reshape(m, -1)).reshape(out, in_per_group, *basis.shape[1:])
