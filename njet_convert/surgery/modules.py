"""Small helper modules the surgery inserts (plain torch ops: they freeze and export as they are)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PadSame", "same_padding"]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total TF-'SAME' padding of one axis: the output has ``ceil(size / stride)`` pixels."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class PadSame(nn.Module):
    """TF-style dynamic 'SAME' padding of the original conv/pool (``total // 2`` before, the rest after), so a
    stride-1 N-Jet conv with ``crop`` = the original kernel's radius sees the same pixels as timm's ``*Same`` layers.
    """

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1),
                 value: float = 0.0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.dilation = tuple(kernel_size), tuple(stride), tuple(dilation)
        self.value = float(value)

    def forward(self, x: Tensor) -> Tensor:
        ph = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if ph == 0 and pw == 0:
            return x
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=self.value)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, value={self.value}"
