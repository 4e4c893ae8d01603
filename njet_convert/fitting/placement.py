"""Placing an original kernel into the N-Jet filter's s×s frame.

A kernel of size ``kh × kw`` with dilation ``d`` is placed so that tap ``u`` lands at offset
``d * (u - (kh - 1) // 2)`` from the centre of the frame: odd kernels are centred exactly; even kernels put one tap
more after the centre than before it (e.g. a 2×2 kernel covers offsets 0 and +1), which is where PyTorch's
``padding="same"`` puts them (it pads ``(k - 1) // 2`` before and the rest after), so the 'same'-padded N-Jet conv
sees the same input pixels as a 'same'-padded original.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..surgery.convs import kernel_radius

__all__ = ["embed_kernel", "kernel_radius"]


def embed_kernel(weight: Tensor, radius: int, dilation: tuple[int, int] = (1, 1)) -> Tensor:
    """``weight [..., kh, kw]`` zero-padded into ``[..., 2R + 1, 2R + 1]`` (taps outside the frame are dropped)."""
    kh, kw = weight.shape[-2:]
    size = 2 * radius + 1
    out = weight.new_zeros(*weight.shape[:-2], size, size)
    rows = [radius + dilation[0] * (u - (kh - 1) // 2) for u in range(kh)]
    cols = [radius + dilation[1] * (v - (kw - 1) // 2) for v in range(kw)]
    keep_r = [(u, r) for u, r in enumerate(rows) if 0 <= r < size]
    keep_c = [(v, c) for v, c in enumerate(cols) if 0 <= c < size]
    if keep_r and keep_c:
        src_r = torch.tensor([u for u, _ in keep_r])
        dst_r = torch.tensor([r for _, r in keep_r])
        src_c = torch.tensor([v for v, _ in keep_c])
        dst_c = torch.tensor([c for _, c in keep_c])
        out[..., dst_r[:, None], dst_c[None, :]] = weight[..., src_r[:, None], src_c[None, :]]
    return out
