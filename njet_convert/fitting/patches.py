"""Input patches of a layer at its sampled output positions, shared by all σ candidates of the calibration.

The data-aware refit compares several σ per layer. Each candidate's basis responses at a sampled output position are
the projection of the same input patch on that candidate's basis, so the patches are extracted once, at the largest
candidate radius ``R`` (``s = 2R + 1``), and every basis is zero-padded (centred) to ``s × s``: then a candidate's
responses are the matrix product ``patches @ basis(σ)ᵀ``, and its moment statistics follow from the patches' own
moments (``Σ z zᵀ = B (Σ p pᵀ) Bᵀ``, ``Σ z yᵀ = B Σ p yᵀ``, ``Σ z = B Σ p`` with ``B = I ⊗ basis``), without any
per-candidate pass over the data when the patch moments are the smaller of the two.

Layouts: patches ``[g, L, (C/g) · s²]`` (samples ``L`` ordered image, row, column; channel-major features, like
the N-Jet layer's ``alpha [O, C/g, M]``); targets ``[g, O/g, L]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .covariance import MomentStats

__all__ = ["PatchMoments", "basis_responses", "embed_basis", "group_targets", "sampled_patches"]


def embed_basis(basis: Tensor, radius: int) -> Tensor:
    """``basis [M, s, s]`` zero-padded (centred) to ``[M, 2 * radius + 1, 2 * radius + 1]``."""
    extra = radius - (basis.shape[-1] - 1) // 2
    if extra < 0:
        raise ValueError(f"radius must be at least the basis's own radius {(basis.shape[-1] - 1) // 2}, got {radius}")
    return F.pad(basis, (extra, extra, extra, extra))


def sampled_patches(xp: Tensor, size: int, starts, steps, out_size, groups: int) -> Tensor:
    """Patches ``[g, B * h * w, (C/g) * size²]`` of the padded input ``xp [B, C, H, W]``.

    Patch ``(i, j)`` covers rows ``starts[0] + i * steps[0] + (0 .. size - 1)`` (columns alike), for ``i < h``,
    ``j < w`` (``out_size = (h, w)``): the same windows a strided ``conv2d`` of ``xp[..., starts[0]:, starts[1]:]``
    would read. Only the sampled windows are copied (one copy, no per-candidate work).
    """
    b, c = xp.shape[:2]
    h, w = out_size
    windows = xp[..., starts[0]:, starts[1]:].unfold(2, size, steps[0]).unfold(3, size, steps[1])
    if windows.shape[2] < h or windows.shape[3] < w:
        raise ValueError(f"out_size {tuple(out_size)} exceeds the {tuple(windows.shape[2:4])} windows of the input")
    windows = windows[:, :, :h, :w]  # [B, C, h, w, s, s], a view
    windows = windows.reshape(b, groups, c // groups, h, w, size, size).permute(1, 0, 3, 4, 2, 5, 6)
    return windows.reshape(groups, b * h * w, (c // groups) * size * size)


def basis_responses(patches: Tensor, basis: Tensor) -> Tensor:
    """Responses ``z [g, (C/g) * M, L]`` (a view) of ``patches [g, L, (C/g) * s²]`` to ``basis [M, s, s]``."""
    g, n, cq = patches.shape
    m, q = basis.shape[0], basis.shape[-1] * basis.shape[-2]
    z = patches.reshape(g, n, cq // q, q) @ basis.reshape(m, q).T.to(patches.dtype)  # [g, L, C/g, M]
    return z.reshape(g, n, -1).transpose(1, 2)


def group_targets(y: Tensor, groups: int) -> Tensor:
    """Targets ``y [B, O, h, w]`` -> ``[g, O/g, B * h * w]`` (samples ordered as :func:`sampled_patches`)."""
    b, o = y.shape[:2]
    return y.reshape(b, groups, o // groups, -1).permute(1, 2, 0, 3).reshape(groups, o // groups, -1)


class PatchMoments(MomentStats):
    """The running float64 sums of :class:`MomentStats` with the raw patches as regressors (``Σ p pᵀ``, ``Σ p yᵀ``,
    ``Σ p``, ``Σ y²``, ``Σ y``), so that any σ's basis-response statistics are a projection of them (module doc)."""

    def update(self, patches: Tensor, y: Tensor) -> None:
        """Add ``L`` samples: ``patches [g, L, P]``, ``y [g, Og, L]`` (products in their dtype, sums in float64)."""
        super().update(patches.transpose(1, 2), y)

    def project(self, basis: Tensor) -> MomentStats:
        """The :class:`MomentStats` of the basis responses ``z = (I ⊗ basis) p`` for ``basis [M, s, s]``."""
        if self.zz is None:
            raise ValueError("PatchMoments.project: no samples were added")
        g, cq = self.z.shape
        m, q = basis.shape[0], basis.shape[-1] * basis.shape[-2]
        c = cq // q
        b = basis.reshape(m, q).to(torch.float64)
        stats = MomentStats()
        pp = self.zz.reshape(g, c, q, c, q)
        stats.zz = torch.einsum("mq,gaqbr,nr->gambn", b, pp, b).reshape(g, c * m, c * m)
        stats.zy = torch.einsum("mq,gaqo->gamo", b, self.zy.reshape(g, c, q, -1)).reshape(g, c * m, -1)
        stats.z = (self.z.reshape(g, c, q) @ b.T).reshape(g, c * m)
        stats.yy, stats.y, stats.count = self.yy.clone(), self.y.clone(), self.count
        return stats
