"""Adaptive average pooling written as two constant matrix products, for ONNX at a fixed input size.

ONNX has no adaptive pooling; torch's exporters express it as a plain AveragePool only when the input size is a
multiple of the output size. After fine-tuning, σ-driven subsampling leaves sizes such as 7×7 -> 4×4, so a frozen
model with a fixed input size replaces those pools by ``rows @ x @ cols`` (exactly PyTorch's windows: output cell
i averages inputs ⌊i·n/m⌋ .. ⌈(i+1)·n/m⌉ - 1), which every runtime runs as MatMul.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MatrixAdaptiveAvgPool2d", "needs_matrix_pool", "pooling_matrix"]


def pooling_matrix(size_in: int, size_out: int) -> Tensor:
    """``[size_out, size_in]`` averaging matrix of 1-D adaptive average pooling."""
    matrix = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-(i + 1) * size_in // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def needs_matrix_pool(size_in: tuple[int, int], size_out: tuple[int, int]) -> bool:
    """True when some output side does not divide its input side (the exporters' AveragePool form fails)."""
    return any(o > 1 and i % o for i, o in zip(size_in, size_out, strict=True))


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``AdaptiveAvgPool2d`` for one fixed input size, as ``rows @ x @ cols`` (see module doc)."""

    def __init__(self, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
        super().__init__()
        self.size_in, self.size_out = tuple(size_in), tuple(size_out)
        self.register_buffer("rows", pooling_matrix(size_in[0], size_out[0]))
        self.register_buffer("cols", pooling_matrix(size_in[1], size_out[1]).t().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols)

    def extra_repr(self) -> str:
        return f"{self.size_in[0]}x{self.size_in[1]} -> {self.size_out[0]}x{self.size_out[1]}"
