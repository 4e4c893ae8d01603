"""The memory layout a grouped (depthwise) convolution larger than 3×3 runs in on the CPU.

Why: PyTorch's CPU convolution of a grouped filter larger than 3×3 is several times slower on an NCHW tensor than
on a channels-last one, its weight gradient most — 1.35–2.7× for MobileNetV2's 5×5 depthwise shapes, forward and
backward, with the layout copies counted (``benchmarks/grouped_layout.py``). A converted depthwise 3×3 layer trains
as a 5×5 one as soon as σ passes 0.5, so this is most of what an order-3 MobileNetV2 step pays over the original.
Grouped 3×3 convolutions have a fast NCHW kernel of their own, which the copies would only slow down; and a bank
of more than ``MAX_CHANNELS_LAST_TAPS`` channel × tap weights ran slower channels-last on small maps (960 channels
at 7×7 on 4²–8² maps, 576 at 9×9 on 8²: 1.35–2.8× the NCHW time), so it keeps NCHW as well.

Only training gains: forward alone, the two copies cost more than the layout saves (1.5–3× the NCHW time on most of
those shapes, batch 16 and batch 1), so the switch is made only when the filter's gradient is being recorded.
Such a convolution then runs on a channels-last copy of an NCHW input, and its output goes back to NCHW:
the values are those of the NCHW call (to float rounding), and the caller sees the layout it passed in. Exporters
and compilers see the plain call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .dispatch import is_tracing

__all__ = ["MAX_CHANNELS_LAST_TAPS", "in_preferred_layout", "prefers_channels_last"]

MAX_CHANNELS_LAST_TAPS = 2**15  # channels × kernel taps up to which channels-last measured faster (module docstring)


def prefers_channels_last(x: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether the convolution of ``x`` with the grouped ``weight`` should run on a channels-last copy of ``x``."""
    taps = weight.shape[-2] * weight.shape[-1]
    if x.device.type != "cpu" or groups == 1 or x.dim() != 4 or taps <= 9:
        return False
    if not (weight.requires_grad and torch.is_grad_enabled()):
        return False
    if weight.numel() > MAX_CHANNELS_LAST_TAPS:
        return False
    if is_tracing():
        return False
    return not x.is_contiguous(memory_format=torch.channels_last)


def in_preferred_layout(conv: Callable[[Tensor], Tensor], x: Tensor, weight: Tensor, groups: int) -> Tensor:
    """``conv(x)``, run channels-last when :func:`prefers_channels_last` says so; the output in ``x``'s layout."""
    if not prefers_channels_last(x, weight, groups):
        return conv(x)
    return conv(x.contiguous(memory_format=torch.channels_last)).contiguous()
