"""Choosing between the dense and the basis-first N-Jet convolution, and caching the composed kernel in eval mode.

The choice comes from a cost model (deterministic: the same shapes always take the same path, no timing noise):

* dense: ``s² · C_in/g · C_out`` multiply-adds per output pixel (one ``conv2d`` with the composed ``s×s`` kernel);
* basis-first: ``KAPPA · (M · C_in/g · C_out + (J · K_y · W/W' + M · K_x) · C_in)`` — the combine plus the two
  Toeplitz stages (``K`` = columns per Toeplitz block, ``min(size, 32 + 2R)``), where ``KAPPA`` is the measured
  efficiency gap: on the 2-core AVX-512 CPU of this project basis-first ran ~4.5× a 3×3 conv's time at
  64→64 channels, 32×32, batch 32, forward+backward, for ~1.9× its multiply-adds, while dense 9×9 ran at ~3.3×;
  ``KAPPA = 5`` puts the crossover between 9×9 and 11×11 there, as measured;
* FFT: ``KAPPA_FFT · 4 · C_in/g · C_out · P_h · (P_w/2 + 1) / (H' · W')`` — one complex multiply-add (4 real) per
  frequency bin of the padded transform (``P ≥ size + 2R``) and channel pair, per output pixel; ``KAPPA_FFT = 19``
  (transforms, layout copies and complex products measured on the same CPU: FFT beat dense 9×9 and basis-first
  at σ = 2, lost to dense 5×5 at σ = 1 and to basis-first at σ = 4, 64→64 channels, 32×32, batch 32), plus, when
  the batch size ``N`` is known, the filters' own transforms (forward, and the inverse of their gradient), which do
  not shrink with the batch: ``KAPPA_FFT_T · 2 · C_in/g · C_out · P_h · P_w · log2(P_h · P_w) / (N · H' · W')``
  (``KAPPA_FFT_T = 8``: at batch 8 FFT lost to dense 9×9 and to basis-first, at batch 32 it won). FFT is only
  considered while the filters' spectra (``C_out · C_in/g · P_h · (P_w/2 + 1)`` complex numbers, kept for the
  backward pass) stay under ``FFT_MAX_BYTES``.

* separable: ``κ_sep · (M · C_in · C_out + I · K_x · C_in + J · K_y · C_out)`` — the combine (exact multiply-adds)
  plus the two banded Toeplitz stages (``K`` = columns per block, ``min(size, SEPARABLE_TILE + 2R)``), groups = 1
  only (:mod:`njet_layers.separable`).

The factors ``KAPPA*`` / ``κ_sep`` are measured per device type and live in :mod:`njet_layers.cost_model`.

Override per layer with ``impl="dense"|"basis_first"|"fft"|"separable"``, or let ``auto`` time the candidates
on the host it runs on (:mod:`njet_layers.autotune`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from .basis import BasisOrder, axis_orders, basis_size
from .cost_model import cost_table
from .fft_conv import fft_size
from .separable import SEPARABLE_TILE, supports_separable

__all__ = [
    "FFT_MAX_BYTES", "IMPLS", "KAPPA", "KAPPA_FFT", "KAPPA_FFT_T", "Impl", "KernelCache", "basis_first_cost",
    "choose_impl", "dense_cost", "fft_cost", "impl_costs", "is_tracing", "separable_cost", "uses_grad",
]

Impl = Literal["auto", "dense", "basis_first", "fft", "separable"]
IMPLS: tuple[str, ...] = ("auto", "dense", "basis_first", "fft", "separable")
KAPPA: float = 5.0  # basis-first efficiency gap to a dense conv, measured on the project's CPU (module docstring)
KAPPA_FFT: float = 19.0  # FFT path's efficiency gap per complex multiply-add (module docstring)
KAPPA_FFT_T: float = 8.0  # weight of the per-call filter transforms (module docstring)
FFT_MAX_BYTES: int = 256 * 2**20  # largest filter spectrum the auto choice accepts for the FFT path
_TILE = 32


def dense_cost(in_per_group: int, out_channels: int, radius: int) -> float:
    """Multiply-adds per output pixel of the dense path."""
    size = 2 * radius + 1
    return float(size * size * in_per_group * out_channels)


def basis_first_cost(
    in_channels: int, in_per_group: int, out_channels: int, order: BasisOrder, radius: int, size: tuple[int, int],
    out_size: tuple[int, int],
) -> float:
    """Efficiency-weighted multiply-adds per output pixel of the basis-first path (see the module docstring)."""
    num, rows = basis_size(order), axis_orders(order)[1] + 1
    k_y, k_x = (min(s, _TILE + 2 * radius) for s in size)
    width_ratio = size[1] / max(out_size[1], 1)
    separable = (rows * k_y * width_ratio + num * k_x) * in_channels
    return KAPPA * (num * in_per_group * out_channels + separable)


def fft_cost(
    in_per_group: int, out_channels: int, radius: int, size: tuple[int, int], out_size: tuple[int, int],
    batch: int | None = None,
) -> tuple[float, int]:
    """Efficiency-weighted multiply-adds per output pixel of the FFT path, and the bytes of the filter spectra.

    ``batch``: when given, the filters' transforms (paid once per call) are spread over ``batch`` images.
    """
    p_h, p_w = (fft_size(s + 2 * radius) for s in size)
    bins = p_h * (p_w // 2 + 1)
    pixels = max(out_size[0] * out_size[1], 1)
    cost = KAPPA_FFT * 4.0 * in_per_group * out_channels * bins / pixels
    if batch:
        cost += KAPPA_FFT_T * 2.0 * in_per_group * out_channels * p_h * p_w * math.log2(p_h * p_w) / (batch * pixels)
    return cost, 8 * in_per_group * out_channels * bins


def separable_cost(
    in_channels: int, out_channels: int, order: BasisOrder, radius: int, size: tuple[int, int], kappa: float,
) -> float:
    """Efficiency-weighted multiply-adds per output pixel of the separable path (see the module docstring)."""
    n_x, n_y = axis_orders(order)
    k_y, k_x = (min(s, SEPARABLE_TILE + 2 * radius) for s in size)
    passes = (n_x + 1) * k_x * in_channels + (n_y + 1) * k_y * out_channels
    return kappa * (basis_size(order) * in_channels * out_channels + passes)  # the combine: the index set's pairs


def impl_costs(
    in_channels: int, out_channels: int, groups: int, order: BasisOrder, radius: int, size: tuple[int, int],
    out_size: tuple[int, int], batch: int | None = None, device: torch.device | str | None = None,
) -> dict[str, float]:
    """Efficiency-weighted multiply-adds per output pixel of every path ``device``'s cost model has measured."""
    table = cost_table(device)
    cg = in_channels // groups
    costs = {"dense": dense_cost(cg, out_channels, radius)}
    if table.basis_first is not None:
        costs["basis_first"] = (
            basis_first_cost(in_channels, cg, out_channels, order, radius, size, out_size) * table.basis_first / KAPPA
        )
    fft, spectrum_bytes = fft_cost(cg, out_channels, radius, size, out_size, batch)
    if table.fft is not None and spectrum_bytes <= FFT_MAX_BYTES:
        costs["fft"] = fft * table.fft / KAPPA_FFT
    if table.separable is not None and supports_separable(in_channels, out_channels, groups):
        costs["separable"] = separable_cost(in_channels, out_channels, order, radius, size, table.separable)
    return costs


def choose_impl(
    in_channels: int, out_channels: int, groups: int, order: BasisOrder, radius: int, size: tuple[int, int],
    out_size: tuple[int, int], batch: int | None = None, device: torch.device | str | None = None,
) -> Literal["dense", "basis_first", "fft", "separable"]:
    """The path the cost model of ``device`` says is cheapest for this layer and input size (module docstring)."""
    costs = impl_costs(in_channels, out_channels, groups, order, radius, size, out_size, batch, device)
    return min(costs, key=costs.__getitem__)  # type: ignore[arg-type]


class KernelCache:
    """Holds one composed kernel, valid while the parameters it came from are unchanged.

    The key holds each parameter's ``_version`` (bumped by every in-place update: optimizer steps,
    ``load_state_dict``'s ``copy_``), its storage pointer, dtype and device (changed by ``.to()``, ``.cuda()``,
    ``.double()``, which swap ``param.data``), and the filter radius.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._value: Tensor | None = None

    @staticmethod
    def key(params: tuple[Tensor | None, ...], radius: int) -> tuple[object, ...]:
        """Identity of the parameters' current values."""
        parts: list[object] = [radius]
        for p in params:
            if p is not None:
                parts.append((p._version, p.data_ptr(), p.dtype, p.device, tuple(p.shape)))
        return tuple(parts)

    def get(self, key: tuple[object, ...]) -> Tensor | None:
        """The cached kernel for ``key``, or None."""
        return self._value if key == self._key else None

    def put(self, key: tuple[object, ...], value: Tensor) -> None:
        """Store ``value`` (detached) under ``key``."""
        self._key, self._value = key, value.detach()

    def clear(self) -> None:
        """Drop the cached kernel."""
        self._key = self._value = None


def is_tracing() -> bool:
    """Whether an exporter or compiler is tracing: it sees one plain conv2d, no cost model, timing or layout switch."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())  # type: ignore[attr-defined,no-untyped-call]


def uses_grad(module: nn.Module) -> bool:
    """Whether autograd would record through the module's parameters right now."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters(recurse=False))
