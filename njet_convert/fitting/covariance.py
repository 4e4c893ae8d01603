"""Streaming second-moment statistics of a layer's basis responses and its target outputs.

For one candidate σ, every input channel's patches are projected onto the ``M`` basis filters (``z``, the response
of the N-Jet basis) and paired with the target output ``y`` at the same positions. Per conv group the running sums
``Σ z zᵀ``, ``Σ z yᵀ``, ``Σ y²``, ``Σ z``, ``Σ y`` are kept in float64. The data-aware fit is then the linear
regression ``alpha = Czz⁻¹ Czy`` — identical to the patch-covariance-weighted least squares
``alpha = (Bᵀ C B)⁻¹ Bᵀ C w`` when ``y = w · x`` (``Czz = Bᵀ C B``, ``Czy = Bᵀ C w``), but its size is
``(in/groups · M)²`` rather than ``(in/groups · s²)²``, and it never forms patch matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MomentStats", "solve_moments"]


class MomentStats:
    """Running sums for the regression of ``y [g, Og, L]`` on ``z [g, F, L]`` (``g`` conv groups)."""

    def __init__(self) -> None:
        self.zz: Tensor | None = None
        self.zy: Tensor | None = None
        self.yy: Tensor | None = None
        self.z: Tensor | None = None
        self.y: Tensor | None = None
        self.count = 0

    def update(self, z: Tensor, y: Tensor) -> None:
        """Add ``L`` samples: ``z [g, F, L]``, ``y [g, Og, L]`` (products in their dtype, sums kept in float64)."""
        parts = (z @ z.transpose(1, 2), z @ y.transpose(1, 2), (y * y).sum(-1), z.sum(-1), y.sum(-1))
        parts = tuple(p.to(torch.float64) for p in parts)
        if self.zz is None:
            self.zz, self.zy, self.yy, self.z, self.y = parts
        else:
            for name, value in zip(("zz", "zy", "yy", "z", "y"), parts, strict=True):
                getattr(self, name).add_(value)
        self.count += z.shape[-1]


def solve_moments(stats: MomentStats, *, centred: bool, ridge: float,
                  prior: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Least-squares ``alpha [g, F, Og]``, offset ``delta [g, Og]``, residual ``[g, Og]`` and ``Σ y² [g, Og]``.

    ``centred``: fit an offset too (``y ≈ alphaᵀ z + delta``), for layers whose bias (or following batch norm) can
    absorb it; otherwise ``y ≈ alphaᵀ z``. ``ridge`` is relative to the mean diagonal of the moment matrix. The
    pseudo-inverse handles rank-deficient bases (order 4 on a 3×3 support). ``prior [g, F, Og]``: shrink towards
    these weights instead of towards zero (``(Czz + λI) alpha = Czy + λ prior``), so that a layer refitted on few
    samples stays close to the weights it had (its pretrained ones).
    """
    n = stats.count
    zz, zy, yy = stats.zz, stats.zy, stats.yy
    if centred:
        mz, my = stats.z / n, stats.y / n
        zz = zz - n * mz[:, :, None] * mz[:, None, :]
        zy = zy - n * mz[:, :, None] * my[:, None, :]
        yy = yy - n * my * my
    scale = torch.diagonal(zz, dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
    eye = torch.eye(zz.shape[-1], dtype=zz.dtype, device=zz.device)
    regular = zz + ridge * scale[:, None, None] * eye
    rhs = zy if prior is None else zy + ridge * scale[:, None, None] * prior.to(zy.dtype)
    alpha = torch.linalg.pinv(regular, hermitian=True, rtol=1e-12) @ rhs
    # residual Σ (y - alphaᵀ z)² = Σy² - 2 alphaᵀ Czy + alphaᵀ Czz alpha, per output channel
    residual = yy - 2 * (alpha * zy).sum(1) + (alpha * (zz @ alpha)).sum(1)
    delta = (stats.y / n - (alpha * (stats.z / n)[:, :, None]).sum(1)) if centred else torch.zeros_like(yy)
    return alpha, delta, residual.clamp_min(0.0), stats.yy
