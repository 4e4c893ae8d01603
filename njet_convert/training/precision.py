"""Mixed precision on CUDA: autocast in bf16 (or fp16 with a GradScaler), N-Jet kernels composed in fp32.

An N-Jet filter is a sum of ``M`` basis filters weighted by α; in fp16/bf16 that sum loses the small
high-order terms and σ's gradient, so :func:`fp32_njet_kernels` makes every :class:`NJetConv2d` compose its
kernel with autocast disabled (the convolution itself still runs in the autocast dtype). It does so by giving
the layers, for the duration of the context, a subclass whose ``kernel()`` turns autocast off — njet_layers
itself knows nothing of autocast. The basis-first path (large σ) is left under autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from njet_layers import NJetConv2d

__all__ = ["Precision", "fp32_njet_kernels", "resolve_precision"]


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None: full fp32) and whether a GradScaler is needed (fp16 only)."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """``auto``: bf16 on CUDA that supports it, fp16 on older CUDA, fp32 on CPU; ``off``: fp32 everywhere."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return Precision(device.type, None)
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs CUDA, the device is {device}")
    return Precision(device.type, torch.bfloat16 if amp == "bf16" else torch.float16)


class _Fp32KernelNJetConv2d(NJetConv2d):
    """NJetConv2d whose ``kernel()`` runs with autocast off (installed temporarily by fp32_njet_kernels)."""

    def kernel(self) -> Tensor:
        with torch.autocast(self.alpha.device.type, enabled=False):
            return super().kernel()


@contextlib.contextmanager
def fp32_njet_kernels(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the context, every (exactly-typed) NJetConv2d of ``model`` composes its kernel in fp32."""
    swapped = []
    if enabled:
        for module in model.modules():
            if type(module) is NJetConv2d:
                module.__class__ = _Fp32KernelNJetConv2d
                swapped.append(module)
    try:
        yield model
    finally:
        for module in swapped:
            module.__class__ = NJetConv2d
