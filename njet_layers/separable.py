"""Separable N-Jet convolution: horizontal 1-D passes, one combine GEMM with α, vertical 1-D passes — flat in σ.

Why: every basis filter is ``g_j(y) · g_i(x)``, so ``F = Σ_{i,j} α[o, c, (i, j)] g_j(y) g_i(x)`` can be applied as

1. along x, per input channel: ``X_i = g_i(x) ⋆ x`` for the ``I = n_x + 1`` horizontal orders;
2. the combine, a ``1×1`` product: ``Z_j[o] = Σ_{i, c} α[o, c, (i, j)] X_i[c]`` — exactly ``M · C_in · C_out``
   multiply-adds per pixel (``M`` = number of basis filters: the original conv's count for a tensor basis of the
   kernel's own size, 10/9 of a 3×3 conv for the order-3 jet), because for every ``j`` the used ``i`` are a
   prefix ``0..w_j - 1`` (``w_j = n - j + 1`` for the jet, ``n_x + 1`` for a tensor basis);
3. along y, per output channel: ``out[o] = Σ_j g_j(y) ⋆ Z_j[o]`` (``J = n_y + 1`` passes, summed).

Unlike :mod:`njet_layers.basis_first` no ``M × C_in`` intermediate is formed: the kept maps are ``I · C_in`` (X)
and ``J · C_out`` (Z) per pixel (4 + 4 channels' worth at order 3 instead of 4 + 10), and the multiply-adds do
not grow with σ (docs/design.md, "Basis index sets").

Layout (why it is fast in eager PyTorch): every stage is a large BLAS product with no layout copy but one cheap ``N ↔
C`` swap of the input. With the input as ``[C, N, H, W]``, the horizontal pass is one GEMM per ``i``, ``x [(C·N·H), W]
@ T_x[i]ᵀ [W, W']`` (a banded Toeplitz matrix carrying padding, stride and crop), giving ``X`` as ``[(I·C),
(N·H·W')]``; the combine is one GEMM per ``j``, ``Xᵀ[:, :w_j·C] @ A_j`` → ``Z_j [(N·H·W'), C_out]`` (for a tensor
basis, whose ``w_j`` are all ``I``, one GEMM for every ``j`` and one copy into the ``J`` slices); the vertical pass is
``T_y[j] [H', H] @ Z_j[n] [H, (W'·C_out)]`` per image (one batched product, accumulated over ``j``), whose result
``[N, H', W', C_out]`` is the channels-last output. Long axes are cut into tiles of output rows (``SEPARABLE_TILE``)
so each Toeplitz block is ``tile + 2R`` wide. The backward pass is written out (the same products transposed) and
keeps ``x``, ``X`` and ``Z``; in training those buffers (and their gradients') come from a :class:`Workspace` the
layer reuses across steps.

Groups: ``groups == 1`` only; other groupings use :mod:`njet_layers.basis_first`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .axis_filters import axis_filters
from .basis import BasisOrder, axis_orders, basis_orders
from .basis_first import BasisFirstPlan, band_tiles, toeplitz_1d

__all__ = ["SEPARABLE_TILE", "Workspace", "separable_conv2d", "supports_separable"]

SEPARABLE_TILE = 16  # output rows/columns per Toeplitz block (measured: 16 beat 8 and 32 on the project's CPU)


def supports_separable(in_channels: int, out_channels: int, groups: int) -> bool:
    """Whether :func:`separable_conv2d` handles this grouping (``groups == 1``)."""
    del in_channels, out_channels
    return groups == 1


class Workspace:
    """Buffers a layer reuses from one training step to the next for its kept maps and their gradients.

    Why: a fresh multi-megabyte CPU allocation is paid as page faults on first touch (measured: ~10 ms per 32 MiB
    on the project's CPU, as much as the combine's GEMM); a layer that reuses its buffers pays them once.
    Safety: a buffer is handed out again only when nothing but the workspace refers to it (its tensor's use
    count is 1) — never while a graph, retained or not yet run backward, still holds it as a saved tensor.
    """

    max_per_shape: int = 4

    def __init__(self) -> None:
        self._free: dict[tuple[Any, ...], list[Tensor]] = {}

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An unused buffer of ``shape`` with ``like``'s dtype and device (a new one when none is free)."""
        held = self._free.setdefault((shape, like.dtype, like.device), [])
        for buf in held:
            if _unshared(buf):
                return buf
        buf = like.new_empty(shape)
        if len(held) < self.max_per_shape:
            held.append(buf)
        return buf

    def clear(self) -> None:
        """Drop every held buffer."""
        self._free.clear()


def _unshared(buf: Tensor) -> bool:
    """Whether only the workspace refers to ``buf`` (PyTorch's tensor use count; False if unavailable)."""
    count = getattr(buf, "_use_count", None)
    return count is not None and count() == 1


def _combine_weights(alpha: Tensor, order: BasisOrder) -> Tensor:
    """α as ``[J, I·C, O]``: ``a[j, (i, c), o] = α[o, c, (i, j)]``, zeros where the index set has no pair."""
    n_x, n_y = axis_orders(order)
    pairs = basis_orders(order)
    i_idx = torch.tensor([i for i, _ in pairs], device=alpha.device)
    j_idx = torch.tensor([j for _, j in pairs], device=alpha.device)
    out_ch, in_ch, _ = alpha.shape
    a = alpha.new_zeros(n_y + 1, n_x + 1, in_ch, out_ch)
    a = a.index_put((j_idx, i_idx), alpha.permute(2, 1, 0))
    return a.view(n_y + 1, (n_x + 1) * in_ch, out_ch)


def _widths(order: BasisOrder) -> tuple[int, ...]:
    """``w_j``: how many horizontal orders ``i = 0..w_j - 1`` the index set pairs with vertical order ``j``."""
    n_x, n_y = axis_orders(order)
    pairs = set(basis_orders(order))
    widths = tuple(sum((i, j) in pairs for i in range(n_x + 1)) for j in range(n_y + 1))
    if any((i, j) not in pairs for j, wd in enumerate(widths) for i in range(wd)):
        raise ValueError(f"order {order!r}: the horizontal orders of some vertical order are not a prefix")
    return widths


def _uniform(widths: tuple[int, ...], num_i: int) -> bool:
    """Whether every vertical order pairs with all ``I`` horizontal ones (a tensor basis): then the combine is one
    GEMM ``[P, I·C] @ [I·C, J·O]`` — one large product runs faster than ``J`` narrow ones (measured on the
    project's CPU: 28 against 37 ms forward for 64 channels, 32², batch 32) — at the price of one copy to ``J``
    slices."""
    return all(width == num_i for width in widths)


def _joint_weights(a: Tensor) -> Tensor:
    """``a [J, I·C, O]`` as the one combine matrix ``[I·C, J·O]`` (column ``j·O + o``)."""
    return a.transpose(0, 1).reshape(a.shape[1], -1)


def _combine_weight_grad(xf: Tensor, g_z: Tensor, a: Tensor, widths: tuple[int, ...], c: int) -> Tensor:
    """``dL/da`` of the per-``j`` combine: ``X[:w_j·C] @ dZ_j``, zeros where the index set has no pair."""
    g_a = torch.zeros_like(a)
    for j, width in enumerate(widths):
        torch.mm(xf[: width * c], g_z[j], out=g_a[j, : width * c])
    return g_a


class _Separable(torch.autograd.Function):
    """``x [C, N, H, W]`` → ``[N, H', W', O]`` (channels-last storage) through the stages of the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, ty: Tensor, tx: Tensor, a: Tensor, widths: tuple[int, ...], tile: int,
                workspace: Workspace | None) -> Tensor:
        c, n, h, w = x.shape
        num_j, ho, num_i, wo = ty.shape[0], ty.shape[1], tx.shape[0], tx.shape[1]
        out_ch = a.shape[-1]
        take = workspace.take if workspace is not None else (lambda shape, like: like.new_empty(shape))
        x2 = x.view(c * n * h, w)
        xmaps = take((num_i, c * n * h, wo), x)
        for o_lo, o_hi, i_lo, i_hi in band_tiles(tx, tile):
            for i in range(num_i):
                torch.mm(x2[:, i_lo:i_hi], tx[i, o_lo:o_hi, i_lo:i_hi].t(), out=xmaps[i][:, o_lo:o_hi])
        xf = xmaps.view(num_i * c, n * h * wo)
        zmaps = take((num_j, n * h * wo, out_ch), x)
        if _uniform(widths, num_i):  # one GEMM for every j (module docstring, "Layout"), then split per j
            joint = take((n * h * wo, num_j * out_ch), x)
            torch.mm(xf.t(), _joint_weights(a), out=joint)
            zmaps.copy_(joint.view(-1, num_j, out_ch).transpose(0, 1))
        else:
            for j, width in enumerate(widths):
                torch.mm(xf[: width * c].t(), a[j, : width * c], out=zmaps[j])
        zv = zmaps.view(num_j, n, h, wo * out_ch)
        out = x.new_empty(n, ho, wo * out_ch)
        for o_lo, o_hi, i_lo, i_hi in band_tiles(ty, tile):
            dst = out[:, o_lo:o_hi]
            for j in range(num_j):
                blk = ty[j, o_lo:o_hi, i_lo:i_hi].expand(n, -1, -1)
                if j == 0:
                    torch.bmm(blk, zv[j][:, i_lo:i_hi], out=dst)
                else:
                    dst.baddbmm_(blk, zv[j][:, i_lo:i_hi])
        ctx.save_for_backward(x, xmaps, zmaps, ty, tx, a)
        ctx.meta = (widths, tile, workspace)
        return out.view(n, ho, wo, out_ch)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, xmaps, zmaps, ty, tx, a = ctx.saved_tensors
        widths, tile, workspace = ctx.meta
        need_x, need_ty, need_tx, need_a = ctx.needs_input_grad[:4]
        c, n, h, w = x.shape
        num_j, ho, num_i, wo = ty.shape[0], ty.shape[1], tx.shape[0], tx.shape[1]
        out_ch = a.shape[-1]
        gv = grad.contiguous().view(n, ho, wo * out_ch)
        zv = zmaps.view(num_j, n, h, wo * out_ch)
        g_ty = torch.zeros_like(ty) if need_ty else None
        if g_ty is not None:
            for o_lo, o_hi, i_lo, i_hi in band_tiles(ty, tile):
                for j in range(num_j):
                    prod = torch.bmm(gv[:, o_lo:o_hi], zv[j][:, i_lo:i_hi].transpose(1, 2))
                    g_ty[j, o_lo:o_hi, i_lo:i_hi] = prod.sum(0)
        take = workspace.take if workspace is not None else (lambda shape, like: like.new_empty(shape))
        g_zmaps = take(tuple(zmaps.shape), zmaps)
        g_z = g_zmaps.view_as(zv)
        for i_lo, i_hi, o_lo, o_hi in band_tiles(ty.transpose(1, 2), tile):  # input rows: no overlap
            for j in range(num_j):
                blk = ty[j, o_lo:o_hi, i_lo:i_hi].t().contiguous().expand(n, -1, -1)
                torch.bmm(blk, gv[:, o_lo:o_hi], out=g_z[j][:, i_lo:i_hi])
        g_z = g_zmaps
        xf = xmaps.view(num_i * c, n * h * wo)
        g_xm = take(tuple(xmaps.shape), xmaps)
        g_xf = g_xm.view_as(xf)
        if _uniform(widths, num_i):
            g_joint = take((n * h * wo, num_j * out_ch), zmaps)
            g_joint.view(-1, num_j, out_ch).copy_(g_z.transpose(0, 1))
            g_a = torch.mm(xf, g_joint).view(-1, num_j, out_ch).transpose(0, 1).contiguous() if need_a else None
            torch.mm(_joint_weights(a), g_joint.t(), out=g_xf)
        else:
            g_a = _combine_weight_grad(xf, g_z, a, widths, c) if need_a else None
            for j, width in enumerate(widths):  # widths[0] is the full I: it initialises g_x maps
                if j == 0:
                    torch.mm(a[j, : width * c], g_z[j].t(), out=g_xf[: width * c])
                else:
                    g_xf[: width * c].addmm_(a[j, : width * c], g_z[j].t())
        x2 = x.view(c * n * h, w)
        g_tx = torch.zeros_like(tx) if need_tx else None
        if g_tx is not None:
            for o_lo, o_hi, i_lo, i_hi in band_tiles(tx, tile):
                for i in range(num_i):
                    g_tx[i, o_lo:o_hi, i_lo:i_hi] = g_xm[i][:, o_lo:o_hi].t() @ x2[:, i_lo:i_hi]
        g_x = None
        if need_x:
            g_x = x.new_empty(c * n * h, w)
            for i_lo, i_hi, o_lo, o_hi in band_tiles(tx.transpose(1, 2), tile):
                dst = g_x[:, i_lo:i_hi]
                for i in range(num_i):
                    if i == 0:
                        torch.mm(g_xm[i][:, o_lo:o_hi], tx[i, o_lo:o_hi, i_lo:i_hi], out=dst)
                    else:
                        dst.addmm_(g_xm[i][:, o_lo:o_hi], tx[i, o_lo:o_hi, i_lo:i_hi])
            g_x = g_x.view(c, n, h, w)
        return g_x, g_ty, g_tx, g_a, None, None, None


def separable_conv2d(
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
    tile: int = SEPARABLE_TILE,
    workspace: Workspace | None = None,
) -> Tensor:
    """N-Jet convolution computed separably; equals ``F.conv2d`` with the composed kernel and 'same' padding.

    Arguments as in :func:`~njet_layers.basis_first.basis_first_conv2d`; ``groups`` must satisfy
    :func:`supports_separable`; ``tile``: output rows per Toeplitz block; ``workspace``: reusable buffers
    (:class:`Workspace`; ``None`` allocates fresh ones). Runs in ``x``'s dtype, or in the autocast dtype when
    autocast is on (the 1-D filters are formed in σ's precision first).
    Returns ``[N, C_out, H', W']`` with channels-last strides.
    """
    _, c, h, w = x.shape
    out_ch = alpha.shape[0]
    if not supports_separable(c, out_ch, groups) or alpha.shape[1] != c:
        raise ValueError(f"separable path: alpha {tuple(alpha.shape)}, in_channels={c}, groups={groups} "
                         "(needs groups=1)")
    dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    plan = BasisFirstPlan.make((h, w), radius, stride, crop)
    g_x, g_y = axis_filters(order, sigma, radius, mixes)
    with torch.autocast(x.device.type, enabled=False):
        ty = toeplitz_1d(g_y, h, list(plan.centers_y)).to(dtype)  # [J, H', H]
        tx = toeplitz_1d(g_x, w, list(plan.centers_x)).to(dtype)  # [I, W', W]
        a = _combine_weights(alpha.to(dtype), order)
        xt = x.to(dtype).transpose(0, 1).contiguous()  # [C, N, H, W]
        out: Tensor = _Separable.apply(xt, ty, tx, a, _widths(order), tile, workspace)  # type: ignore[no-untyped-call]
        if bias is not None:
            out = out + bias.to(dtype)
        return out.permute(0, 3, 1, 2)
