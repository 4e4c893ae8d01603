"""The memory layout an N-Jet layer's convolution larger than 3×3 trains in on the CPU.

Why: PyTorch's CPU convolution of a filter larger than 3×3 runs forward + backward faster on a channels-last tensor
than on an NCHW one, even with the two layout copies counted (``benchmarks/conv_layout.py``):

- grouped (depthwise) filters, the weight gradient most: 1.35–2.7× for MobileNetV2's 5×5 depthwise shapes. A
  converted depthwise 3×3 layer trains as a 5×5 one as soon as σ passes 0.5, so this was most of what an order-3
  MobileNetV2 step paid over the original. A bank of more than ``MAX_CHANNELS_LAST_TAPS`` channel × tap weights ran
  slower channels-last on small maps (960 channels at 7×7 on 4²–8² maps, 576 at 9×9 on 8²: 1.35–2.8× the NCHW
  time), so it keeps NCHW. Up to 17×17 grouped filters gain (0.34–0.84× on 32²–64² maps, the Intel host below).
- ungrouped filters, on a host whose PyTorch CPU kernels run AVX-512 (an Intel Xeon, 2026-12-07): 0.63–0.82× the
  NCHW time with 32–64 input channels (5×5 to 9×9 on 8²–112² maps, batch 1–64), a little less with 16
  (0.90–1.03×), slower with a stem's 3 (1.03–1.17×: the copies are what there is to pay). From 11×11 it is mixed
  (0.75–1.09×), and a 15×15 filter on 112² maps took 15 s a call channels-last, so the rule stops at
  ``MAX_CHANNELS_LAST_SIZE``. On an AMD host (AVX2, 2026-12-06) ResNet-32's training step ran slower with its 5×5
  layers channels-last (1.43× the original's, against 1.33–1.37× in NCHW), so there ungrouped filters keep NCHW; the
  two hosts differ in vendor and vector width, and which of the two matters was not separated. An N-Jet layer
  fitted to a 3×3 kernel trains as 5×5 once σ passes 0.5 (``s = 2⌈kσ⌉ + 1``), where ``auto`` takes the dense path.

3×3 filters keep NCHW: grouped ones have a fast NCHW kernel of their own, and an ungrouped N-Jet 3×3 runs the very
call the original network's ``nn.Conv2d`` makes, so the layout is the user's choice (``model.to(memory_format=
torch.channels_last)`` speeds both alike), not the layer's.

Only training gains: forward alone, the two copies cost more than the layout saves (1.5–3× the NCHW time on most of
the grouped shapes, batch 16 and batch 1; ungrouped forward alone was not measured), so the switch is made only
when the filter's gradient is being recorded. Such a convolution then runs on a channels-last copy of an NCHW
input, and its output goes back to NCHW: the values are those of the NCHW call (to float rounding), and the caller
sees the layout it passed in. Exporters and compilers see the plain call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from .dispatch import is_tracing

__all__ = ["MAX_CHANNELS_LAST_SIZE", "MAX_CHANNELS_LAST_TAPS", "MIN_CHANNELS_LAST_INPUTS", "in_preferred_layout",
           "prefers_channels_last"]

MAX_CHANNELS_LAST_TAPS = 2**15  # grouped: channels × kernel taps up to which channels-last measured faster
MIN_CHANNELS_LAST_INPUTS = 16  # ungrouped: input channels from which channels-last measured at least as fast
MAX_CHANNELS_LAST_SIZE = 9  # ungrouped: the largest filter side measured faster (15×15 on 112² maps: 15 s a call)


def prefers_channels_last(x: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether the convolution of ``x`` with ``weight`` should run on a channels-last copy of ``x``."""
    taps = weight.shape[-2] * weight.shape[-1]
    if x.device.type != "cpu" or x.dim() != 4 or taps <= 9:
        return False
    if not (weight.requires_grad and torch.is_grad_enabled()):
        return False
    if not (_grouped_rule(weight) if groups != 1 else _ungrouped_rule(weight)):
        return False
    if is_tracing():
        return False
    return not x.is_contiguous(memory_format=torch.channels_last)


def _grouped_rule(weight: Tensor) -> bool:
    return weight.numel() <= MAX_CHANNELS_LAST_TAPS


def _ungrouped_rule(weight: Tensor) -> bool:
    small = max(weight.shape[-2:]) <= MAX_CHANNELS_LAST_SIZE
    return small and weight.shape[1] >= MIN_CHANNELS_LAST_INPUTS and _has_avx512()


@functools.cache
def _has_avx512() -> bool:
    """Whether PyTorch's CPU kernels run with AVX-512 here (where the ungrouped rule was measured a gain)."""
    return "AVX512" in torch.backends.cpu.get_cpu_capability()


def in_preferred_layout(conv: Callable[[Tensor], Tensor], x: Tensor, weight: Tensor, groups: int) -> Tensor:
    """``conv(x)``, run channels-last when :func:`prefers_channels_last` says so; the output in ``x``'s layout."""
    if not prefers_channels_last(x, weight, groups):
        return conv(x)
    return conv(x.contiguous(memory_format=torch.channels_last)).contiguous()
