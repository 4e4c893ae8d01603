"""Basis-first N-Jet convolution: shared separable derivative maps, then one matrix product with α.

Every basis filter is separable, ``g_j(y) · g_i(x)``, so the ``M`` derivative maps of every input channel can be
computed once and shared by all output channels; a ``1×1`` combine with α as an ``[out, M · in]`` matrix then
gives the output. The cost per output pixel is ``~M · C_in · C_out`` (the combine) plus ``~(J · K_y + M · K_x) ·
C_in`` (the separable stage) — flat in σ, where the dense path costs ``s² · C_in · C_out`` with ``s = 2⌈kσ⌉ + 1``.

Layout (why it is fast in eager PyTorch): the input goes channels-last, ``[N, H, W, C]``. Each 1-D filtering is a
product with a banded Toeplitz matrix (``[out, in]``, which also carries the zero padding, the stride and the crop),
so both stages are batched matrix products (BLAS) with no padding copies and no gather:

1. along y: ``Y[j, n] = T_y[j] @ x[n]``, ``x[n]`` seen as ``[H, W · C]``  (``J = order + 1`` maps);
2. along x: ``B[n, h, :, m, :] = T_x[i] @ Y[j, n, h]`` for each basis pair ``m = (i, j)``, written straight into
   the combine's layout ``[N, H', W', M, C]``;
3. combine: ``out = B.view(N·H'·W', M·C) @ A`` (one GEMM; ``A`` is α rearranged), returned as an ``NCHW``-shaped
   tensor with channels-last strides (same values; a following basis-first layer reads it without a copy).

Large images are cut into tiles of output rows so that each Toeplitz block stays narrow (``tile + 2R`` columns).
The separable stage has a hand-written backward (the same products transposed); gradients reach α, σ (through the
1-D filters) and the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .axis_filters import axis_filters
from .basis import BasisOrder, basis_orders

__all__ = ["BasisFirstPlan", "band_tiles", "basis_first_conv2d", "output_centers", "toeplitz_1d"]

_TILE = 32  # output rows per Toeplitz block on large images (each block reads TILE + 2R input rows)


def output_centers(size: int, radius: int, stride: int, crop: int) -> list[int]:
    """Input index under the filter centre for each output position, exactly as the dense path's padding implies.

    The dense path runs ``conv2d`` with padding ``max(R - crop, 0)`` and, when ``crop > R``, trims the rest from
    the strided output; both cases are reproduced here so that the two paths agree pixel for pixel.
    """
    pad = radius - crop
    if pad >= 0:
        count = (size + 2 * pad - 2 * radius - 1) // stride + 1
        return [o * stride - pad + radius for o in range(max(count, 0))]
    count = (size - 2 * radius - 1) // stride + 1 - 2 * (-pad)
    return [(o - pad) * stride + radius for o in range(max(count, 0))]


def toeplitz_1d(filters: Tensor, size: int, centers: list[int]) -> Tensor:
    """Banded matrices ``T[f, o, t] = filters[f, t - centers[o] + R]`` (zero outside the band): 1-D correlation.

    ``filters`` is ``[F, 2R + 1]``; returns ``[F, len(centers), size]``, differentiable in ``filters``. Multiplying
    a signal by ``T[f]`` is correlating it with ``filters[f]`` under zero padding, at the given output centres.
    """
    radius = (filters.shape[-1] - 1) // 2
    pos = torch.arange(size, device=filters.device)
    ctr = torch.tensor(centers, device=filters.device, dtype=pos.dtype)
    tap = pos[None, :] - ctr[:, None] + radius
    inside = (tap >= 0) & (tap <= 2 * radius)
    return filters[:, tap.clamp(0, 2 * radius)] * inside.to(filters.dtype)


def band_tiles(matrix: Tensor, tile: int) -> list[tuple[int, int, int, int]]:
    """Row tiles ``(o_lo, o_hi, i_lo, i_hi)`` of a banded ``[..., out, in]`` matrix and the input columns each needs."""
    rows, cols = matrix.shape[-2:]
    if rows <= tile + tile // 2:
        return [(0, rows, 0, cols)]
    nonzero = matrix.detach().abs().sum(dim=tuple(range(matrix.dim() - 2))) != 0  # [out, in]
    spans = []
    for lo in range(0, rows, tile):
        hi = min(lo + tile, rows)
        used = nonzero[lo:hi].any(dim=0).nonzero()
        i_lo, i_hi = (int(used.min()), int(used.max()) + 1) if used.numel() else (0, 1)
        spans.append((lo, hi, i_lo, i_hi))
    return spans


class _SeparableBasisMaps(torch.autograd.Function):
    """``[N, H, W, C]`` → ``[N, H', W', M, C]`` derivative maps through two Toeplitz stages (see module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, ty: Tensor, tx: Tensor, pairs: tuple[tuple[int, int], ...]) -> Tensor:
        n, h, w, c = x.shape
        ho, wo = ty.shape[1], tx.shape[1]
        y_tiles, x_tiles = band_tiles(ty, _TILE), band_tiles(tx, _TILE)
        ymaps = x.new_empty(ty.shape[0], n, ho, w * c)
        xv = x.view(n, h, w * c)
        for j in range(ty.shape[0]):
            for o_lo, o_hi, i_lo, i_hi in y_tiles:
                block = ty[j, o_lo:o_hi, i_lo:i_hi].expand(n, -1, -1)
                torch.bmm(block, xv[:, i_lo:i_hi], out=ymaps[j, :, o_lo:o_hi])
        out = x.new_empty(n * ho, wo, len(pairs), c)
        yv = ymaps.view(ty.shape[0], n * ho, w, c)
        for m, (i, j) in enumerate(pairs):
            for o_lo, o_hi, i_lo, i_hi in x_tiles:
                block = tx[i, o_lo:o_hi, i_lo:i_hi].expand(n * ho, -1, -1)
                torch.bmm(block, yv[j, :, i_lo:i_hi], out=out[:, o_lo:o_hi, m])
        ctx.save_for_backward(x, ymaps, ty, tx)
        ctx.pairs, ctx.tiles = pairs, (y_tiles, x_tiles)
        return out.view(n, ho, wo, len(pairs), c)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, ymaps, ty, tx = ctx.saved_tensors
        y_tiles, x_tiles = ctx.tiles
        n, h, w, c = x.shape
        ho, wo = ty.shape[1], tx.shape[1]
        grad = grad.contiguous().view(n * ho, wo, len(ctx.pairs), c)
        yv = ymaps.view(ty.shape[0], n * ho, w, c)
        need_x, need_ty, need_tx = ctx.needs_input_grad[:3]
        g_tx = torch.zeros_like(tx) if need_tx else None
        g_y = torch.zeros_like(ymaps).view_as(yv) if (need_x or need_ty) else None
        for m, (i, j) in enumerate(ctx.pairs):
            for o_lo, o_hi, i_lo, i_hi in x_tiles:
                g_out = grad[:, o_lo:o_hi, m]
                if g_y is not None:
                    block_t = tx[i, o_lo:o_hi, i_lo:i_hi].t().expand(n * ho, -1, -1)
                    g_y[j, :, i_lo:i_hi].baddbmm_(block_t, g_out)
                if g_tx is not None:
                    g_tx[i, o_lo:o_hi, i_lo:i_hi] += torch.bmm(g_out, yv[j, :, i_lo:i_hi].transpose(1, 2)).sum(0)
        g_x = g_ty = None
        if g_y is not None:
            g_yv = g_y.view(ty.shape[0], n, ho, w * c)
            xv = x.view(n, h, w * c)
            g_x = torch.zeros_like(xv) if need_x else None
            g_ty = torch.zeros_like(ty) if need_ty else None
            for j in range(ty.shape[0]):
                for o_lo, o_hi, i_lo, i_hi in y_tiles:
                    g_blk = g_yv[j, :, o_lo:o_hi]
                    if g_x is not None:
                        g_x[:, i_lo:i_hi].baddbmm_(ty[j, o_lo:o_hi, i_lo:i_hi].t().expand(n, -1, -1), g_blk)
                    if g_ty is not None:
                        g_ty[j, o_lo:o_hi, i_lo:i_hi] += torch.bmm(g_blk, xv[:, i_lo:i_hi].transpose(1, 2)).sum(0)
            g_x = None if g_x is None else g_x.view(n, h, w, c)
        return g_x, g_ty, g_tx, None


@dataclass(frozen=True)
class BasisFirstPlan:
    """Static geometry of one basis-first call: filter radius, stride, crop and the output centres per axis."""

    radius: int
    stride: tuple[int, int]
    crop: tuple[int, int]
    centers_y: tuple[int, ...]
    centers_x: tuple[int, ...]

    @classmethod
    def make(cls, size: tuple[int, int], radius: int, stride: tuple[int, int], crop: tuple[int, int]) -> BasisFirstPlan:
        """Plan for an input of spatial ``size`` (H, W)."""
        cy = tuple(output_centers(size[0], radius, stride[0], crop[0]))
        cx = tuple(output_centers(size[1], radius, stride[1], crop[1]))
        return cls(radius, stride, crop, cy, cx)


def basis_first_conv2d(
    x: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    order: BasisOrder,
    radius: int,
    *,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    crop: tuple[int, int] = (0, 0),
    groups: int = 1,
    mixes: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """N-Jet convolution computed basis-first; equals ``F.conv2d`` with the composed kernel and 'same' padding.

    Args:
        x: ``[N, C_in, H, W]`` input (any memory format; channels-last avoids one copy).
        alpha: ``[C_out, C_in // groups, M]`` basis weights, last axis in :func:`basis_orders` order.
        sigma: 0-d scale tensor (gradients flow to it through the 1-D filters).
        order, radius: basis index set (:data:`~njet_layers.basis.BasisOrder`) and filter half-width ``R``.
        bias, stride, crop, groups: as in :class:`~njet_layers.NJetConv2d`.
        mixes: a tensor basis's per-axis mixes ``(mix_x, mix_y)`` (:mod:`njet_layers.axis_filters`).

    Returns ``[N, C_out, H', W']`` with channels-last strides.
    """
    n, c, h, w = x.shape
    out_ch = alpha.shape[0]
    if out_ch % groups or c % groups or alpha.shape[1] != c // groups:
        raise ValueError(f"alpha shape {tuple(alpha.shape)} does not match in_channels={c}, groups={groups}")
    plan = BasisFirstPlan.make((h, w), radius, stride, crop)
    g_x, g_y = (g.to(x.dtype) for g in axis_filters(order, sigma, radius, mixes))
    ty = toeplitz_1d(g_y, h, list(plan.centers_y))
    tx = toeplitz_1d(g_x, w, list(plan.centers_x))
    pairs = tuple(basis_orders(order))
    xl = x.permute(0, 2, 3, 1).contiguous()
    maps: Tensor = _SeparableBasisMaps.apply(xl, ty, tx, pairs)  # type: ignore[no-untyped-call]  # [N, H', W', M, C]
    ho, wo, num = maps.shape[1], maps.shape[2], len(pairs)
    a = alpha.to(x.dtype)
    if groups == 1:
        flat = maps.view(n * ho * wo, num * c)
        weight = a.transpose(1, 2).reshape(out_ch, num * c).t()  # [(m, c), O]
        out = torch.addmm(bias.to(x.dtype), flat, weight) if bias is not None else flat @ weight
    else:
        cg, og = c // groups, out_ch // groups
        grouped = maps.view(n * ho * wo, num, groups, cg)
        out = torch.einsum("pmgc,gocm->pgo", grouped, a.view(groups, og, cg, num)).reshape(-1, out_ch)
        if bias is not None:
            out = out + bias.to(x.dtype)
    return out.view(n, ho, wo, out_ch).permute(0, 3, 1, 2)
