"""A convolution evaluated only where a following ``nearest`` subsampling keeps its output.

Safe subsampling turns a strided conv into a stride-1 conv followed by a :class:`~njet_layers.SafeSubsample`; in
``nearest`` mode the subsampling only picks output rows ``rows`` and columns ``cols``, so every other output pixel
is computed for nothing (4× the multiply-adds of the original stride-2 conv). :func:`conv2d_at` computes exactly
the picked pixels. The kept rows (and columns) are split into arithmetic runs: one run at a converted network's
start (an integer factor), a few once σ has moved the factor slightly off it (2.03 keeps steps of 2 with a step
of 3 every thirty-odd rows). Each pair of a row run and a column run is one strided conv over the slice of the
input it reads, with the conv's own padding where the slice touches the map's edge. Index sets with many runs
(a factor far from an integer) gather, for each kept row and column, the input taps the kernel reads and convolve
that gathered map with a stride of the kernel's size — the original strided conv's multiply-adds at any factor,
but on this project's CPU 2–7× slower than the runs (``benchmarks/sampled_conv.py``). Gradients (α, σ through
the kernel, the input) are those of the full conv followed by the subsampling.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["MAX_PIECES", "Axis", "Piece", "conv2d_at", "sampling_plan"]


MAX_PIECES = 16  # strided convs (row runs × column runs) before gathering is the better deal

Run = tuple[int, int, int]  # (first index, step, count)


def conv2d_at(x: Tensor, weight: Tensor, bias: Tensor | None, rows: Tensor, cols: Tensor,
              padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups)[..., rows, :][..., cols]``, computing only those
    pixels. ``padding`` may be negative (the full output is then cropped by that much on each side)."""
    pad = [max(p, 0) for p in padding]
    shift = [max(-p, 0) for p in padding]
    plan = _plan(tuple(x.shape[-2:]), tuple(weight.shape[-2:]),  # type: ignore[arg-type]
                 [_runs(idx + s) for idx, s in zip((rows, cols), shift, strict=True)], pad, dilation)
    if plan is not None and len(plan) == 1 and len(plan[0]) == 1:  # one grid: plain autograd is cheapest
        return _piece_conv(x, weight, bias, plan[0][0], dilation, groups)
    if plan is not None:
        return _RunsConv.apply(x, weight, bias, plan, dilation, groups)  # type: ignore[no-any-return,no-untyped-call]
    if any(pad):
        x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    size = weight.shape[-2:]
    x = _gather(x, rows + shift[0], size[0], dilation[0], -2)
    x = _gather(x, cols + shift[1], size[1], dilation[1], -1)
    return F.conv2d(x, weight, bias, tuple(size), 0, 1, groups)


def sampling_plan(size: tuple[int, int], taps: tuple[int, int], rows: Tensor, cols: Tensor,
                  padding: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> list[list[Piece]] | None:
    """How :func:`conv2d_at` computes a stride-1 conv of ``taps`` (padding ≥ 0) on a ``size`` map at ``rows`` ×
    ``cols`` without gathering: bands (one per row run) of pieces (one strided conv per column run), or None when
    it gathers (more than ``MAX_PIECES`` pieces, or a run that is not one strided conv). The export computes a
    frozen conv the same way (:mod:`njet_convert.export.stride_fold`)."""
    return _plan(size, taps, [_runs(rows), _runs(cols)], list(padding), dilation)


def _runs(idx: Tensor) -> list[Run] | None:
    """``idx`` as maximal arithmetic runs ``(start, step, count)``, or None when it is empty or not increasing."""
    values = idx.tolist()
    if not values:
        return None
    runs, i = [], 0
    while i < len(values):
        step = values[i + 1] - values[i] if i + 1 < len(values) else 1
        if step < 1:
            return None
        j = i + 1
        while j < len(values) and values[j] - values[j - 1] == step:
            j += 1
        runs.append((values[i], step, j - i))
        i = j
    return runs


class Axis(NamedTuple):
    """One run along one axis: the input slice its windows read and the strided conv that computes it."""

    span: slice  # of the input
    padding: int  # the conv's own, at both ends of the slice
    skip: int  # windows the conv computes before the run's first (cropped)
    step: int
    kept: int  # windows of the run


class Piece(NamedTuple):
    """One strided conv of a plan: a row run × a column run."""

    rows: Axis
    cols: Axis


def _plan(size: tuple[int, int], taps: tuple[int, int], runs: list[list[Run] | None], pad: list[int],
          dilation: tuple[int, int]) -> list[list[Piece]] | None:
    """Bands (one per row run) of pieces (one per column run) in output order; None when the runs are too many
    or one cannot be computed as a strided conv of a slice."""
    row_runs, col_runs = runs
    if row_runs is None or col_runs is None or len(row_runs) * len(col_runs) > MAX_PIECES:
        return None
    axes = [[_axis(size[d], taps[d], run, pad[d], dilation[d]) for run in axis_runs]
            for d, axis_runs in enumerate((row_runs, col_runs))]
    if any(a is None for axis in axes for a in axis):
        return None
    return [[Piece(r, c) for c in axes[1]] for r in axes[0]]  # type: ignore[arg-type]


def _axis(n: int, taps: int, run: Run, pad: int, dilation: int) -> Axis | None:
    """The slice ``[a, b)`` and symmetric padding ``P`` whose windows ``a − P + j·step`` include the run's, where
    every window the run keeps reads real data only from the slice and zeros only outside the map (None if no
    ``a ≥ 0`` fits)."""
    start, step, count = run
    lo = start - pad  # the run's first window's first tap, in the input's coordinates (negative: in the padding)
    hi = lo + step * (count - 1) + dilation * (taps - 1) + 1
    padding = max(-lo, hi - n, 0)
    first = max(lo, 0)
    a = first - (first - lo - padding) % step  # the largest a ≤ first with a window starting at lo
    if a < 0:
        return None
    return Axis(slice(a, min(hi, n)), padding, (lo - a + padding) // step, step, count)


def _piece_conv(x: Tensor, weight: Tensor, bias: Tensor | None, piece: Piece, dilation: tuple[int, int],
                groups: int) -> Tensor:
    """The piece's output pixels (its runs' windows, nothing else)."""
    rows, cols = piece
    out = F.conv2d(_piece_input(x, piece), weight, bias, (rows.step, cols.step), (rows.padding, cols.padding),
                   dilation, groups)
    return out[..., rows.skip : rows.skip + rows.kept, cols.skip : cols.skip + cols.kept]


def _piece_input(x: Tensor, piece: Piece) -> Tensor:
    rows, cols = piece.rows.span, piece.cols.span
    full = (rows.start, rows.stop, cols.start, cols.stop) == (0, x.shape[-2], 0, x.shape[-1])
    return x if full else x[..., rows, cols]  # a full slice would still cost a copy in backward


class _RunsConv(torch.autograd.Function):
    """The pieces' convs as one node: autograd through the input slices would fill and add a zero gradient the
    size of the whole input for every piece; here each piece's input gradient goes into its slice of one."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, plan: list[list[Piece]],
                dilation: tuple[int, int], groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.plan, ctx.dilation, ctx.groups = plan, dilation, groups
        bands = [torch.cat([_piece_conv(x, weight, bias, p, dilation, groups) for p in band], -1) for band in plan]
        return torch.cat(bands, -2)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_w = torch.zeros_like(weight) if need_w else None
        top = 0
        for band in ctx.plan:
            left = 0
            for piece in band:
                rows, cols = piece.rows.kept, piece.cols.kept
                _piece_backward(grad[..., top : top + rows, left : left + cols], x, weight, piece, ctx, grad_x, grad_w)
                left += cols
            top += band[0].rows.kept
        grad_b = grad.sum((0, 2, 3)) if need_b else None
        return grad_x, grad_w, grad_b, None, None, None


def _piece_backward(grad: Tensor, x: Tensor, weight: Tensor, piece: Piece, ctx: Any, grad_x: Tensor | None,
                    grad_w: Tensor | None) -> None:
    """Add one piece's input and weight gradients into ``grad_x`` (its slice) and ``grad_w``."""
    part = _piece_input(x, piece)
    rows, cols = piece
    windows = [(n + 2 * a.padding - d * (k - 1) - 1) // a.step + 1 for n, a, d, k in zip(
        part.shape[-2:], piece, ctx.dilation, weight.shape[-2:], strict=True)]
    margins = (cols.skip, windows[1] - cols.skip - cols.kept, rows.skip, windows[0] - rows.skip - rows.kept)
    if any(margins):  # the windows the forward computed and cropped
        grad = F.pad(grad, margins)
    grad_part, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad, part, weight, None, (rows.step, cols.step), (rows.padding, cols.padding), ctx.dilation, False,
        (0, 0), ctx.groups, (grad_x is not None, grad_w is not None, False))
    if grad_x is not None:
        grad_x[..., rows.span, cols.span] += grad_part
    if grad_w is not None:
        grad_w += grad_weight


def _gather(x: Tensor, starts: Tensor, taps: int, dilation: int, dim: int) -> Tensor:
    """For each start, the ``taps`` input positions ``start + dilation * t`` the kernel reads, laid end to end."""
    offsets = torch.arange(taps, device=starts.device) * dilation
    return x.index_select(dim, (starts.to(x.device)[:, None] + offsets.to(x.device)).reshape(-1))
