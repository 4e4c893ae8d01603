"""A convolution evaluated only where a following ``nearest`` subsampling keeps its output.

Safe subsampling turns a strided conv into a stride-1 conv followed by a :class:`~njet_layers.SafeSubsample`; in
``nearest`` mode the subsampling only picks output rows ``rows`` and columns ``cols``, so every other output pixel
is computed for nothing (4× the multiply-adds of the original stride-2 conv). :func:`conv2d_at` computes exactly
the picked pixels: on an arithmetic grid (an integer factor, as at a converted network's start) as a strided conv,
otherwise by gathering, for each kept row and column, the input taps the kernel reads and convolving that gathered
map with a stride of the kernel's size — the original strided conv's multiply-adds at any factor. The gathers
are ``index_select`` calls, so gradients (α, σ through the kernel, the input) are those of the full conv followed
by the subsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["conv2d_at"]


def conv2d_at(x: Tensor, weight: Tensor, bias: Tensor | None, rows: Tensor, cols: Tensor,
              padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups)[..., rows, :][..., cols]``, computing only those
    pixels. ``padding`` may be negative (the full output is then cropped by that much on each side)."""
    pad = [max(p, 0) for p in padding]
    shift = [max(-p, 0) for p in padding]
    grid = [_grid(idx + s) for idx, s in zip((rows, cols), shift, strict=True)]
    size = weight.shape[-2:]
    row_grid, col_grid = grid
    if row_grid is not None and col_grid is not None and row_grid[1] == col_grid[1]:
        strided = _as_strided_conv(x, weight, bias, (row_grid[0], col_grid[0]), row_grid[1], pad,
                                   (rows.numel(), cols.numel()), dilation, groups)
        if strided is not None:
            return strided
    if any(pad):
        x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    if row_grid is not None and col_grid is not None and row_grid[1] == col_grid[1]:
        (r0, step), (c0, _) = row_grid, col_grid
        x = x[..., r0:, c0:]
        out = F.conv2d(x, weight, bias, step, 0, dilation, groups)
        return out[..., : rows.numel(), : cols.numel()]
    x = _gather(x, rows + shift[0], size[0], dilation[0], -2)
    x = _gather(x, cols + shift[1], size[1], dilation[1], -1)
    return F.conv2d(x, weight, bias, tuple(size), 0, 1, groups)


def _as_strided_conv(x: Tensor, weight: Tensor, bias: Tensor | None, starts: tuple[int, int], step: int,
                     pad: list[int], counts: tuple[int, int], dilation: tuple[int, int],
                     groups: int) -> Tensor | None:
    """The grid ``starts + step * n`` (coordinates of ``x`` padded by ``pad``) as one strided conv with the conv's
    own padding, or None when its symmetric padding cannot reach the last kept pixel. The conv library pads inside
    its kernel: no padded copy of ``x`` and no padding backward (for a depthwise 5×5 at stride 2 on this project's
    CPU, 1.7× quicker than padding first)."""
    own, offset = [], []
    for dim, (start, p, count) in enumerate(zip(starts, pad, counts, strict=True)):
        q = p - start  # padding that puts the first kept pixel's window at the map's edge
        span = x.shape[dim - 2] + 2 * max(q, 0) - max(-q, 0)
        reach = dilation[dim] * (weight.shape[dim - 2] - 1) + 1
        if span < reach or (span - reach) // step + 1 < count:
            return None
        own.append(max(q, 0))
        offset.append(max(-q, 0))
    out = F.conv2d(x[..., offset[0]:, offset[1]:], weight, bias, step, own, dilation, groups)
    return out[..., : counts[0], : counts[1]]


def _grid(idx: Tensor) -> tuple[int, int] | None:
    """``(start, step)`` when ``idx`` is ``start + step * arange(n)`` with ``step >= 1``, else None."""
    if idx.numel() < 2:
        return (int(idx[0]), 1) if idx.numel() else None
    steps = idx[1:] - idx[:-1]
    step = int(steps[0])
    return (int(idx[0]), step) if step >= 1 and bool((steps == step).all()) else None


def _gather(x: Tensor, starts: Tensor, taps: int, dilation: int, dim: int) -> Tensor:
    """For each start, the ``taps`` input positions ``start + dilation * t`` the kernel reads, laid end to end."""
    offsets = torch.arange(taps, device=starts.device) * dilation
    return x.index_select(dim, (starts.to(x.device)[:, None] + offsets.to(x.device)).reshape(-1))
