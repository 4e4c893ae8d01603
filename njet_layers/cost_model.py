"""Measured cost constants of the N-Jet layer paths, per device type: what ``impl="auto"`` decides with.

Each path's cost is its multiply-adds per output pixel times a measured efficiency factor ``κ`` (time per
multiply-add relative to a dense ``conv2d``, forward + backward); the formulas are in :mod:`njet_layers.dispatch`.
Only measured values enter the table; a device type without an entry for a path never has it chosen automatically.

CPU (the project's 2-core AVX-512 machine, float32, forward + backward against ``nn.Conv2d`` 3×3 in NCHW,
64→64 channels, 32×32, batch 32):

* ``separable`` ``κ = 1.6``: fitted from the order-3 jet (2.19× the 3×3 conv at σ = 1, 2.42× at σ = 4) and the
  tensor basis ``(2, 2)`` (1.91× at σ = 1, 1.93× at σ = 4) against their multiply-add counts (1.39×, 1.56×, 1.21×,
  1.33× the conv's): ``κ`` = 1.58, 1.56, 1.58, 1.45 — one factor within 10 % for both index sets and both σ;
  Checked against the whole grid of ``benchmarks/layer_speed.py`` (same machine, loaded): right within ~15 % at
  batch 32 and 64 channels; at batch 1 and at 32 channels the separable path runs 1.3–2× slower than this predicts
  (per-call and per-pixel overheads the multiply-add model does not carry), so there ``auto`` can take it where
  dense is slightly faster (order-3 jet, σ = 1, 32², batch 1: 3.1× vs dense 2.4×). A fit with an overhead term is
  the next step;
* ``basis_first`` ``κ = 5``, ``fft`` ``κ = 19`` (per complex multiply-add) and ``κ_T = 8`` (filter transforms):
  measured for those paths when they were written (see :mod:`njet_layers.dispatch`).

CUDA: no path but dense is measured yet (``benchmarks/cuda_check.sh`` prints the ratios to fit ``separable`` from);
until then ``auto`` keeps the CPU constants for the two older paths, as before, and never picks ``separable``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["COST_TABLES", "CostTable", "cost_table"]


@dataclass(frozen=True)
class CostTable:
    """Efficiency factors (time per multiply-add relative to dense ``conv2d``); ``None``: not measured, not chosen."""

    basis_first: float | None = 5.0
    fft: float | None = 19.0
    fft_transforms: float = 8.0
    separable: float | None = None


COST_TABLES: dict[str, CostTable] = {
    "cpu": CostTable(separable=1.6),
    "cuda": CostTable(),
}


def cost_table(device: torch.device | str | None) -> CostTable:
    """The table for ``device``'s type (CPU when unknown or ``None``)."""
    kind = torch.device(device).type if device is not None else "cpu"
    return COST_TABLES.get(kind, COST_TABLES["cpu"])
