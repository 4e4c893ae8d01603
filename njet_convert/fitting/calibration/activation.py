"""Activation-aware refit of depthwise N-Jet layers that feed a batch norm (and, as in most CNNs, a ReLU-like
activation): output errors where the original network's activation is switched off matter little, so those samples
weigh less in the fit.

A depthwise layer's channels are fitted independently; the exact strategy (:mod:`.exact`) weighs every sampled
position alike. Here each position of channel ``c`` gets the weight

    w = clamp(1 + b / margin, floor, 1),   b = the original's batch-norm output at that position,

full weight where the original activation is on (``b >= 0``), falling to ``floor`` a ``margin`` below zero, where a
ReLU-family activation clips (the converted output there only has to stay clipped). The weighted moments per channel
are rescaled by ``count / Σw`` so that the shared solver (:func:`~njet_convert.fitting.covariance.solve_moments`),
which centres with one sample count, sees the weighted means and the weighted covariance; the bias correction then
uses the weighted mean shift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..covariance import MomentStats
from ..patches import group_targets, sampled_patches
from .exact import MAX_PATCH_ELEMENTS, ExactRefit
from .sampling import sampled_target, window_geometry
from .strategy import RefitJob

__all__ = ["ActivationAwareRefit", "activation_weights"]


def activation_weights(y: Tensor, norm, margin: float, floor: float) -> Tensor:
    """Weights ``[C, L]`` of depthwise targets ``y [C, 1, L]`` from the batch norm ``norm`` that follows them."""
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps) if norm.affine else \
        1 / torch.sqrt(norm.running_var + norm.eps)
    shift = (norm.bias.detach() if norm.affine else 0) - norm.running_mean * scale
    b = y[:, 0] * scale[:, None].to(y.dtype) + shift[:, None].to(y.dtype)
    return (1 + b / margin).clamp(floor, 1.0)


class ActivationAwareRefit(ExactRefit):
    """The exact fit with activation-aware sample weights, for depthwise layers directly followed by a batch norm."""

    name = "activation-aware"

    def applies(self, job: RefitJob) -> bool:
        layer = job.layer
        return (super().applies(job) and job.options.activation_floor < 1 and job.norm is not None
                and layer.groups == layer.alpha.shape[0] and layer.alpha.shape[1] == 1)

    def statistics(self, job: RefitJob, bases: dict[float, Tensor], pad: int,
                   gen: torch.Generator) -> dict[float, MomentStats]:
        layer, opts = job.layer, job.options
        size = 2 * pad + 1
        sums: list[Tensor] | None = None
        count = 0
        for x in job.inputs:
            ys, offsets, sub = sampled_target(job.original, x, opts.max_positions, gen)
            starts, steps = window_geometry(layer, x.shape[-2:], pad, ys.shape[-2:], offsets, sub)
            xp = F.pad(x, (pad, pad, pad, pad))
            yg = group_targets(ys, layer.groups)  # [C, 1, L]
            weights = activation_weights(yg, job.norm, opts.activation_margin, opts.activation_floor)
            per_image = ys.shape[-2] * ys.shape[-1]
            chunk = max(1, MAX_PATCH_ELEMENTS // max(1, per_image * x.shape[1] * size * size))
            for i in range(0, x.shape[0], chunk):
                cut = slice(i * per_image, (i + chunk) * per_image)
                patches = sampled_patches(xp[i : i + chunk], size, starts, steps, ys.shape[-2:], layer.groups)
                parts = _weighted_sums(patches, yg[..., cut], weights[:, cut])
                sums = parts if sums is None else [a.add_(b) for a, b in zip(sums, parts, strict=True)]
                count += patches.shape[1]
        return {s: _project(sums, b, count) for s, b in bases.items()}


def _weighted_sums(patches: Tensor, y: Tensor, w: Tensor) -> list[Tensor]:
    """Σ w p pᵀ, Σ w p y, Σ w y², Σ w p, Σ w y, Σ w per channel (float64), for ``patches [C, L, q]``."""
    pw = patches * w[..., None]
    yw = y[:, 0] * w
    parts = [pw.transpose(1, 2) @ patches, pw.transpose(1, 2) @ y[:, 0, :, None], (yw * y[:, 0]).sum(-1)[:, None],
             pw.sum(1), yw.sum(-1)[:, None], w.sum(-1)]
    return [p.double() for p in parts]


def _project(sums: list[Tensor], basis: Tensor, count: int) -> MomentStats:
    """The weighted sums projected on ``basis [M, s, s]``, rescaled per channel by ``count / Σw`` (module doc)."""
    pp, py, yy, p, y, wsum = sums
    f = count / wsum.clamp_min(1e-12)
    b = basis.reshape(basis.shape[0], -1).to(torch.float64)
    stats = MomentStats()
    stats.zz = (b @ pp @ b.T) * f[:, None, None]
    stats.zy = (b @ py) * f[:, None, None]
    stats.z = (p @ b.T) * f[:, None]
    stats.yy, stats.y, stats.count = yy * f[:, None], y * f[:, None], count
    return stats
