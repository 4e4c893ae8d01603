"""Choosing between the dense and the basis-first N-Jet convolution, and caching the composed kernel in eval mode.

The choice comes from a cost model (deterministic: the same shapes always take the same path, no timing noise):

* dense: ``s² · C_in/g · C_out`` multiply-adds per output pixel (one ``conv2d`` with the composed ``s×s`` kernel);
* basis-first: ``KAPPA · (M · C_in/g · C_out + (J · K_y · W/W' + M · K_x) · C_in)`` — the combine plus the two
  Toeplitz stages (``K`` = columns per Toeplitz block, ``min(size, 32 + 2R)``), where ``KAPPA`` is the measured
  efficiency gap: on the 2-core AVX-512 CPU of this project basis-first ran ~4.5× a 3×3 conv's time at
  64→64 channels, 32×32, batch 32, forward+backward, for ~1.9× its multiply-adds, while dense 9×9 ran at ~3.3×;
  ``KAPPA = 5`` puts the crossover between 9×9 and 11×11 there, as measured. Override per layer with
  ``impl="dense"|"basis_first"``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .basis import basis_size

__all__ = ["IMPLS", "KAPPA", "Impl", "KernelCache", "basis_first_cost", "choose_impl", "dense_cost", "uses_grad"]

Impl = Literal["auto", "dense", "basis_first"]
IMPLS: tuple[str, ...] = ("auto", "dense", "basis_first")
KAPPA: float = 5.0  # basis-first efficiency gap to a dense conv, measured on the project's CPU (module docstring)
_TILE = 32


def dense_cost(in_per_group: int, out_channels: int, radius: int) -> float:
    """Multiply-adds per output pixel of the dense path."""
    size = 2 * radius + 1
    return float(size * size * in_per_group * out_channels)


def basis_first_cost(
    in_channels: int, in_per_group: int, out_channels: int, order: int, radius: int, size: tuple[int, int],
    out_size: tuple[int, int],
) -> float:
    """Efficiency-weighted multiply-adds per output pixel of the basis-first path (see the module docstring)."""
    num, rows = basis_size(order), order + 1
    k_y, k_x = (min(s, _TILE + 2 * radius) for s in size)
    width_ratio = size[1] / max(out_size[1], 1)
    separable = (rows * k_y * width_ratio + num * k_x) * in_channels
    return KAPPA * (num * in_per_group * out_channels + separable)


def choose_impl(
    in_channels: int, out_channels: int, groups: int, order: int, radius: int, size: tuple[int, int],
    out_size: tuple[int, int],
) -> Literal["dense", "basis_first"]:
    """``"basis_first"`` when the cost model says it is cheaper for this layer and input size, else ``"dense"``."""
    cg = in_channels // groups
    bf = basis_first_cost(in_channels, cg, out_channels, order, radius, size, out_size)
    return "basis_first" if bf < dense_cost(cg, out_channels, radius) else "dense"


class KernelCache:
    """Holds one composed kernel, valid while the parameters it came from are unchanged.

    The key holds each parameter's ``_version`` (bumped by every in-place update: optimizer steps,
    ``load_state_dict``'s ``copy_``), its storage pointer, dtype and device (changed by ``.to()``, ``.cuda()``,
    ``.double()``, which swap ``param.data``), and the filter radius.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Tensor | None = None

    @staticmethod
    def key(params: tuple[Tensor | None, ...], radius: int) -> tuple:
        """Identity of the parameters' current values."""
        parts: list = [radius]
        for p in params:
            if p is not None:
                parts.append((p._version, p.data_ptr(), p.dtype, p.device, tuple(p.shape)))
        return tuple(parts)

    def get(self, key: tuple) -> Tensor | None:
        """The cached kernel for ``key``, or None."""
        return self._value if key == self._key else None

    def put(self, key: tuple, value: Tensor) -> None:
        """Store ``value`` (detached) under ``key``."""
        self._key, self._value = key, value.detach()

    def clear(self) -> None:
        """Drop the cached kernel."""
        self._key = self._value = None


def uses_grad(module: nn.Module) -> bool:
    """Whether autograd would record through the module's parameters right now."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters(recurse=False))
