"""Separable N-Jet convolution: horizontal 1-D passes, a 1×1 combine with α, vertical 1-D passes — flat in σ.

Why: every basis filter is ``g_j(y) · g_i(x)``, so ``F = Σ_{i,j} α[o, c, (i, j)] g_j(y) g_i(x)`` can be applied as

1. along x, per input channel: ``X_i = g_i(x) ⋆ x`` for the ``I = n_x + 1`` horizontal orders;
2. the combine, a ``1×1`` product: ``Z_j[o] = Σ_{i, c} α[o, c, (i, j)] X_i[c]`` — ``M · C_in · C_out``
   multiply-adds per pixel for the ``M`` filters of the index set: exactly the original conv's count for a tensor
   basis of the kernel's own size; for the jet each ``j`` pairs with a prefix ``i ≤ n − j`` of ``X``'s channels
   (:func:`combine_prefixes`), and only that prefix is multiplied (until 2026-12-07 the pairs outside ``i + j ≤
   n`` were multiplied as zeros, 16 products for the 10 filters at order 3);
3. along y, per output channel: ``out[o] = Σ_j g_j(y) ⋆ Z_j[o]`` (``J = n_y + 1`` passes, summed).

Unlike :mod:`njet_layers.basis_first` no ``M × C_in`` intermediate is formed: the kept maps are ``I · C_in`` (X)
and ``J · C_out`` (Z) per pixel (4 + 4 channels' worth at order 3 instead of 4 + 10), and the multiply-adds do
not grow with σ (docs/design.md, "Basis index sets").

Layout (why it is fast in eager PyTorch): everything is pixel-major (channels-last), so each stage is one large
library call with no layout copy. With the input as ``[N, H, W, C]``, the horizontal pass is a product per tile of
output columns, ``T_x [(W'_tile · I), W_band] @ x[n, h] [W_band, C]`` (rows ordered ``(w', i)``: a banded Toeplitz
matrix carrying padding, stride and crop), giving ``X`` as ``[N, H, W', (I·C)]``; the combine gives ``Z_j [N, H, W',
C_out]``: for a tensor basis a ``1×1`` convolution per ``j`` of ``X`` with α — the convolution library ran these
shapes 1.3–1.7× faster than a BLAS product on the AMD host of 2026-12-06 and as fast on the Intel host of 2026-12-07
(``benchmarks/combine_throughput.py``) — and for the jet a BLAS product per ``j`` over the prefix of ``X``'s
channels it pairs with, read in place (a 1×1 convolution of a channel slice would copy it); the vertical pass is
``T_y[j] [H', H] @ Z_j[n] [H, (W'·C_out)]`` per image (one batched product, accumulated over ``j``), whose result
``[N, H', W', C_out]`` is the channels-last output. Long axes are cut into tiles of output rows or columns
(``SEPARABLE_TILE``) so each Toeplitz block is ``tile + 2R`` wide. The backward pass is written out: the vertical
products transposed, the combine's gradients (for a tensor basis the input gradient as one ``1×1`` convolution of
all ``dZ_j`` side by side and the weight gradient from the convolution library; for the jet the same products over
each ``j``'s prefix), the horizontal products transposed. It keeps ``x``, ``X`` and ``Z``; in training ``X``, the
joint ``dZ`` and the jet's ``dX`` come from a :class:`Workspace` the layer reuses across steps.

Groups: ``groups == 1`` only; other groupings use :mod:`njet_layers.basis_first`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .axis_filters import axis_filters
from .basis import BasisOrder, axis_orders, basis_orders
from .basis_first import BasisFirstPlan, band_tiles, toeplitz_1d

__all__ = ["SEPARABLE_TILE", "Workspace", "combine_prefixes", "separable_conv2d", "supports_separable"]

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
    """α as the combine's 1×1 conv weight ``[J·O, I·C]``: row ``j·O + o``, column ``i·C + c`` holds
    ``α[o, c, (i, j)]``; zeros where the index set has no pair ``(i, j)``."""
    n_x, n_y = axis_orders(order)
    pairs = basis_orders(order)
    i_idx = torch.tensor([i for i, _ in pairs], device=alpha.device)
    j_idx = torch.tensor([j for _, j in pairs], device=alpha.device)
    out_ch, in_ch, _ = alpha.shape
    a = alpha.new_zeros(n_y + 1, n_x + 1, out_ch, in_ch)
    a = a.index_put((j_idx, i_idx), alpha.permute(2, 0, 1))
    return a.transpose(1, 2).reshape((n_y + 1) * out_ch, (n_x + 1) * in_ch)


def _taker(workspace: Workspace | None) -> Any:
    """``take(shape, like)``: a workspace buffer, or a fresh one without a workspace."""
    return workspace.take if workspace is not None else (lambda shape, like: like.new_empty(shape))


def _conv1x1(x: Tensor, weight: Tensor) -> Tensor:
    """``x [N, K, H, W]`` (channels-last) times ``weight [M, K]`` per pixel, as a 1×1 convolution: the convolution
    library runs it 1.3–1.7× faster than a BLAS matrix product of the same shape on the project's CPU, forward
    and gradients together (``benchmarks/combine_throughput.py``)."""
    out: Tensor = F.conv2d(x, weight.contiguous()[:, :, None, None])
    return out


def _conv1x1_weight_grad(grad: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``dL/dweight [M, K]`` of :func:`_conv1x1` for the output gradient ``grad``."""
    w4 = weight[:, :, None, None]
    mask = (False, True, False)
    grads = torch.ops.aten.convolution_backward(grad, x, w4, None, (1, 1), (0, 0), (1, 1), False, (0, 0), 1, mask)
    g_weight: Tensor = grads[1]
    return g_weight.view_as(weight)


def combine_prefixes(order: BasisOrder) -> tuple[int, ...] | None:
    """Per vertical order ``j``, how many horizontal orders the index set pairs with it (``i < prefixes[j]``);
    ``None`` when every ``j`` takes all of them (a tensor basis).

    Why: the jet's pairs ``i + j ≤ n`` are, for each ``j``, a prefix of ``X``'s channels, so its combine multiplies
    only those (10 of 16 products at order 3) as matrix products that read the prefix in place: the row stride is the
    product's leading dimension, so nothing is copied.
    """
    n_x, n_y = axis_orders(order)
    pairs = basis_orders(order)
    prefixes = tuple(1 + max(i for i, jj in pairs if jj == j) for j in range(n_y + 1))
    return None if all(k == n_x + 1 for k in prefixes) else prefixes


def _combine(x4: Tensor, a: Tensor, num_j: int, c: int, prefixes: tuple[int, ...] | None) -> list[Tensor]:
    """``Z_j [N, H, W', O]`` (contiguous) of ``X = x4 [N, H, W', I·C]`` and the combine weight ``a [J·O, I·C]``."""
    out_ch = a.shape[0] // num_j
    if prefixes is None:
        xv = x4.permute(0, 3, 1, 2)
        return [_conv1x1(xv, a[j * out_ch:(j + 1) * out_ch]).permute(0, 2, 3, 1).contiguous() for j in range(num_j)]
    xm = x4.reshape(-1, x4.shape[-1])
    return [torch.mm(xm[:, :k * c], a[j * out_ch:(j + 1) * out_ch, :k * c].t()).view(*x4.shape[:3], out_ch)
            for j, k in enumerate(prefixes)]


def _combine_weight_grad(g_j4: Tensor, x4: Tensor, a: Tensor, c: int, prefixes: tuple[int, ...] | None) -> Tensor:
    """``dL/da`` of :func:`_combine` from ``dL/dZ`` side by side, ``g_j4 [N, H, W', J·O]``."""
    if prefixes is None:
        return _conv1x1_weight_grad(g_j4.permute(0, 3, 1, 2), x4.permute(0, 3, 1, 2), a)
    out_ch = a.shape[0] // len(prefixes)
    g_m, xm = g_j4.reshape(-1, g_j4.shape[-1]), x4.reshape(-1, x4.shape[-1])
    g_a = torch.zeros_like(a)
    for j, k in enumerate(prefixes):
        rows = slice(j * out_ch, (j + 1) * out_ch)
        g_a[rows, :k * c] = torch.mm(g_m[:, rows].t(), xm[:, :k * c])
    return g_a


def _combine_input_grad(g_j4: Tensor, a: Tensor, c: int, prefixes: tuple[int, ...] | None, take: Any) -> Tensor:
    """``dL/dX [N, H, W', I·C]`` of :func:`_combine` from ``dL/dZ`` side by side, ``g_j4 [N, H, W', J·O]``."""
    if prefixes is None:
        return _conv1x1(g_j4.permute(0, 3, 1, 2), a.t()).permute(0, 2, 3, 1)
    out_ch = a.shape[0] // len(prefixes)
    g_m = g_j4.reshape(-1, g_j4.shape[-1])
    g_x: Tensor = take((g_m.shape[0], a.shape[1]), g_m)
    first = 1 if prefixes[0] * c == a.shape[1] else 0  # the jet's j = 0 takes every horizontal order
    if first:
        torch.mm(g_m[:, :out_ch], a[:out_ch], out=g_x)
    else:
        g_x.zero_()
    for j in range(first, len(prefixes)):
        rows, cols = slice(j * out_ch, (j + 1) * out_ch), slice(0, prefixes[j] * c)
        g_x[:, cols].addmm_(g_m[:, rows], a[rows, cols])
    return g_x.view(*g_j4.shape[:3], a.shape[1])


def _x_blocks(tx: Tensor, tile: int) -> list[tuple[int, int, int, int, Tensor]]:
    """Row tiles of the horizontal stage, ``(o_lo, o_hi, i_lo, i_hi, block)``: ``block [(o_hi - o_lo)·I, i_hi -
    i_lo]`` maps input columns to output columns × horizontal orders, rows ordered ``(w', i)``."""
    t_all = tx.transpose(0, 1)  # [W', I, W]
    return [(o_lo, o_hi, i_lo, i_hi, t_all[o_lo:o_hi, :, i_lo:i_hi].reshape(-1, i_hi - i_lo))
            for o_lo, o_hi, i_lo, i_hi in band_tiles(tx, tile)]


def _horizontal(x3: Tensor, blocks: list[tuple[int, int, int, int, Tensor]], num_i: int, out: Tensor) -> Tensor:
    """``x3 [N·H, W, C]`` → ``out [N·H, W'·I, C]`` (``X`` pixel-major: ``[N, H, W', I·C]``)."""
    if len(blocks) == 1:
        torch.matmul(blocks[0][4], x3, out=out)
        return out
    for o_lo, o_hi, i_lo, i_hi, block in blocks:  # a matmul into a strided slice runs far slower: copy instead
        out[:, o_lo * num_i:o_hi * num_i] = torch.matmul(block, x3[:, i_lo:i_hi])
    return out


def _horizontal_grads(x3: Tensor, g_xm: Tensor, blocks: list[tuple[int, int, int, int, Tensor]], tx: Tensor,
                      need: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of :func:`_horizontal` for ``x3`` (a fresh tensor: it leaves the layer) and for the Toeplitz
    matrices ``tx [I, W', W]``."""
    num_i = tx.shape[0]
    g_x3 = torch.zeros_like(x3) if need[0] else None
    g_tx = torch.zeros_like(tx) if need[1] else None
    for o_lo, o_hi, i_lo, i_hi, block in blocks:
        g_rows = g_xm[:, o_lo * num_i:o_hi * num_i]
        if g_x3 is not None:
            g_x3[:, i_lo:i_hi] += torch.matmul(block.t(), g_rows)
        if g_tx is not None:
            g_block = torch.bmm(g_rows, x3[:, i_lo:i_hi].transpose(1, 2)).sum(0)
            g_tx[:, o_lo:o_hi, i_lo:i_hi] = g_block.view(o_hi - o_lo, num_i, i_hi - i_lo).transpose(0, 1)
    return g_x3, g_tx


def _vertical(zmaps: list[Tensor], ty: Tensor, tile: int, out: Tensor) -> Tensor:
    """``out [N, H', W'·O] = Σ_j T_y[j] @ Z_j`` per image, ``Z_j [N, H, W'·O]``."""
    n = out.shape[0]
    for o_lo, o_hi, i_lo, i_hi in band_tiles(ty, tile):
        dst = out[:, o_lo:o_hi]
        for j, z in enumerate(zmaps):
            blk = ty[j, o_lo:o_hi, i_lo:i_hi].expand(n, -1, -1)
            if j == 0:
                torch.bmm(blk, z[:, i_lo:i_hi], out=dst)
            else:
                dst.baddbmm_(blk, z[:, i_lo:i_hi])
    return out


def _vertical_grads(gv: Tensor, zmaps: list[Tensor], ty: Tensor, tile: int, g_joint: Tensor,
                    need_ty: bool) -> Tensor | None:
    """Gradients of :func:`_vertical`: ``dL/dZ_j`` into ``g_joint [N, H, W', J, O]`` (all ``j`` side by side, as
    the combine's 1×1 conv gives them) and, when asked, ``dL/dT_y``."""
    n, _, wo, num_j, out_ch = g_joint.shape
    g_ty = torch.zeros_like(ty) if need_ty else None
    if g_ty is not None:
        for o_lo, o_hi, i_lo, i_hi in band_tiles(ty, tile):
            for j, z in enumerate(zmaps):
                g_ty[j, o_lo:o_hi, i_lo:i_hi] = torch.bmm(gv[:, o_lo:o_hi], z[:, i_lo:i_hi].transpose(1, 2)).sum(0)
    for i_lo, i_hi, o_lo, o_hi in band_tiles(ty.transpose(1, 2), tile):  # input rows: no overlap
        for j in range(num_j):
            blk = ty[j, o_lo:o_hi, i_lo:i_hi].t().expand(n, -1, -1)
            g_joint[:, i_lo:i_hi, :, j] = torch.bmm(blk, gv[:, o_lo:o_hi]).view(n, i_hi - i_lo, wo, out_ch)
    return g_ty


class _Separable(torch.autograd.Function):
    """``x [N, H, W, C]`` (channels-last memory) → ``[N, H', W', O]`` through the stages of the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, ty: Tensor, tx: Tensor, a: Tensor, tile: int,
                workspace: Workspace | None, prefixes: tuple[int, ...] | None) -> Tensor:
        n, h, w, c = x.shape
        num_j, ho, num_i, wo = ty.shape[0], ty.shape[1], tx.shape[0], tx.shape[1]
        out_ch = a.shape[0] // num_j
        take = _taker(workspace)
        blocks = _x_blocks(tx, tile)
        xmaps = _horizontal(x.view(n * h, w, c), blocks, num_i, take((n * h, wo * num_i, c), x))
        x4 = xmaps.view(n, h, wo, num_i * c)
        zmaps = [z.view(n, h, wo * out_ch) for z in _combine(x4, a, num_j, c, prefixes)]
        out = _vertical(zmaps, ty, tile, x.new_empty(n, ho, wo * out_ch))
        ctx.save_for_backward(x, xmaps, ty, tx, a, *zmaps)
        ctx.meta = (tile, workspace, blocks, prefixes)
        return out.view(n, ho, wo, out_ch)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, xmaps, ty, tx, a, *zmaps = ctx.saved_tensors
        tile, workspace, blocks, prefixes = ctx.meta
        need_x, need_ty, need_tx, need_a = ctx.needs_input_grad[:4]
        n, h, w, c = x.shape
        num_j, ho, num_i, wo = ty.shape[0], ty.shape[1], tx.shape[0], tx.shape[1]
        out_ch = a.shape[0] // num_j
        take = _taker(workspace)
        gv = grad.contiguous().view(n, ho, wo * out_ch)
        g_joint = take((n, h, wo, num_j, out_ch), x)
        g_ty = _vertical_grads(gv, zmaps, ty, tile, g_joint, need_ty)
        g_j4, x4 = g_joint.view(n, h, wo, num_j * out_ch), xmaps.view(n, h, wo, num_i * c)
        g_a = _combine_weight_grad(g_j4, x4, a, c, prefixes) if need_a else None
        g_x3 = g_tx = None
        if need_x or need_tx:
            g_xm = _combine_input_grad(g_j4, a, c, prefixes, take).reshape(n * h, wo * num_i, c)
            g_x3, g_tx = _horizontal_grads(x.view(n * h, w, c), g_xm, blocks, tx, (need_x, need_tx))
        g_x = g_x3.view(n, h, w, c) if g_x3 is not None else None
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
    :func:`supports_separable`; ``tile``: output rows (columns) per vertical (horizontal) Toeplitz block;
    ``workspace``: reusable buffers (:class:`Workspace`; ``None`` allocates fresh ones). Runs in ``x``'s dtype, or
    in the autocast dtype when autocast is on (the 1-D filters are formed in σ's precision first).
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
        xt = x.to(dtype).permute(0, 2, 3, 1).contiguous()  # [N, H, W, C]: free for a channels-last input
        prefixes = combine_prefixes(order)
        out: Tensor = _Separable.apply(xt, ty, tx, a, tile, workspace, prefixes)  # type: ignore[no-untyped-call]
        if bias is not None:
            out = out + bias.to(dtype)
        return out.permute(0, 3, 1, 2)
