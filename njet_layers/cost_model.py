"""Measured cost constants of the N-Jet layer paths, per device type: what ``impl="auto"`` decides with.

Each path's cost is its multiply-adds per output pixel times a measured efficiency factor ``κ`` (time per
multiply-add relative to a dense ``conv2d``, forward + backward); the formulas are in :mod:`njet_layers.dispatch`.
Only measured values enter the table; a device type without an entry for a path never has it chosen automatically.

CPU (the project's 2-core AVX-512 machine, float32, forward + backward against ``nn.Conv2d`` 3×3 in NCHW,
64→64 channels, 32×32, batch 32):

* ``separable`` ``κ = 2.1``: fitted (2026-12-06, after the combine moved to the convolution library) from the
  order-3 jet (4.11–4.23× the 3×3 conv at σ = 1, 4.55× at σ = 4) and the tensor basis ``(2, 2)`` (2.57–2.61×,
  2.79–2.82×) against their multiply-add counts (2.06×, 2.22×, 1.21×, 1.33× the conv's, the jet's combine counting
  the zero pairs it multiplies): ``κ`` = 2.00–2.06, 2.05, 2.13–2.16, 2.09–2.12 — one factor within 5 % for both
  index sets and both σ (``python benchmarks/layer_speed.py --quick --threads 2 --rounds 20``, twice). The earlier
  fit, 1.6, came from a quieter run of the previous path on a host that ran it ~1.3× faster; hosts differ that much,
  which is what ``set_autotune`` (:mod:`njet_layers.autotune`) is for. At batch 1 and at 32 channels the path runs
  slower than the multiply-add model predicts (per-call and per-pixel overheads it does not carry). Since
  2026-12-07 the jet's combine multiplies only its pairs and is counted so (order 3 at σ = 1: 1.39× the conv's
  multiply-adds); on that day's Intel host it ran 2.9–3.0× the conv (``κ`` ≈ 2.1, unchanged) and the tensor basis
  2.0–2.2× (``κ`` ≈ 1.7–1.8; ``python benchmarks/layer_speed.py --sizes 32 112 --batches 1 32 --bases 2 3 4 2x2
  --sigmas 1 4 --rounds 7 --nets``), so the factor stays;
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
    "cpu": CostTable(separable=2.1),
    "cuda": CostTable(),
}


def cost_table(device: torch.device | str | None) -> CostTable:
    """The table for ``device``'s type (CPU when unknown or ``None``)."""
    kind = torch.device(device).type if device is not None else "cpu"
    return COST_TABLES.get(kind, COST_TABLES["cpu"])
