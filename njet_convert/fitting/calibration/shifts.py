"""Helpers every refit shares: the residual of given weights on moment statistics, and absorbing a mean output
shift into the layer's bias or the following batch norm's running mean."""

from __future__ import annotations

from torch import Tensor, nn

from ..covariance import MomentStats

__all__ = ["absorb_shift", "residual_of"]


def residual_of(stats: MomentStats, alpha: Tensor, *, centred: bool) -> tuple[Tensor, Tensor]:
    """Residual ``Σ (y - alphaᵀ z - delta)² [g, Og]`` of the given ``alpha [g, F, Og]`` and its best offset
    ``delta [g, Og]`` (zero unless ``centred``)."""
    n = stats.count
    zz, zy, yy = stats.zz, stats.zy, stats.yy
    delta = yy.new_zeros(yy.shape)
    if centred:
        mz, my = stats.z / n, stats.y / n
        zz = zz - n * mz[:, :, None] * mz[:, None, :]
        zy = zy - n * mz[:, :, None] * my[:, None, :]
        yy = yy - n * my * my
        delta = my - (alpha * mz[:, :, None]).sum(1)
    residual = yy - 2 * (alpha * zy).sum(1) + (alpha * (zz @ alpha)).sum(1)
    return residual.clamp_min(0.0), delta


def absorb_shift(layer: nn.Module, norm: nn.Module | None, shift: Tensor) -> None:
    """Make ``shift [O]`` the layer's bias, or subtract it from the following batch norm's running mean."""
    if layer.bias is not None:
        layer.bias.copy_(shift.to(layer.bias.dtype))
    elif norm is not None:
        norm.running_mean.sub_(shift.to(norm.running_mean.dtype))
