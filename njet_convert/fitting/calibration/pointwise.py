"""Refit of the plain 1×1 convs kept in both networks: their inputs in the converted network regressed onto their
outputs in the original one, which absorbs the error the converted layers before them left."""

from __future__ import annotations

import math

from torch import nn

from ..covariance import MomentStats, solve_moments
from ..patches import group_targets
from .shifts import absorb_shift, residual_of
from .strategy import LayerResult, RefitJob

__all__ = ["PointwiseRefit"]


class PointwiseRefit:
    """Least-squares refit of a plain 1×1 conv (ridge ``pointwise_ridge``, at least ``pointwise_min_samples``
    samples per input channel); the pretrained weights stay when they fit the data better."""

    name = "pointwise"

    def applies(self, job: RefitJob) -> bool:
        return type(job.layer) is nn.Conv2d

    def refit(self, job: RefitJob) -> LayerResult:
        conv, opts, inputs, targets = job.layer, job.options, job.inputs, job.targets or []
        if not inputs:
            return LayerResult(job.name, self.name, skipped="not reached by the calibration data")
        if len(inputs) != len(targets) or any(x.shape[-2:] != y.shape[-2:] or x.shape[0] != y.shape[0]
                                              for x, y in zip(inputs, targets, strict=True)):
            return LayerResult(job.name, self.name, skipped="its grid differs from the original's")
        g = conv.groups
        stats = MomentStats()
        for x, y in zip(inputs, targets, strict=True):
            stats.update(group_targets(x, g), group_targets(y, g))
        needed = opts.pointwise_min_samples * conv.weight.shape[1]
        if stats.count < needed:
            return LayerResult(job.name, self.name, skipped=f"too few samples ({stats.count} < {needed}, "
                                                            f"pointwise_min_samples per input channel)")
        can_shift = opts.bias_correction and (conv.bias is not None or job.norm is not None)
        o, i = conv.weight.shape[:2]
        current = conv.weight.detach().double().reshape(g, o // g, i).transpose(1, 2)
        alpha, delta, residual, yy = solve_moments(stats, centred=can_shift, ridge=opts.pointwise_ridge,
                                                   prior=current if opts.pointwise_prior else None)
        res_now, delta_now = residual_of(stats, current, centred=can_shift)
        if float(res_now.sum()) <= float(residual.sum()):
            alpha, delta, residual = current, delta_now, res_now
        conv.weight.copy_(alpha.transpose(1, 2).reshape(o, i, 1, 1).to(conv.weight.dtype))
        if can_shift:
            absorb_shift(conv, job.norm, delta.reshape(o))
        return LayerResult(job.name, self.name, error=math.sqrt(float(residual.sum() / yy.sum().clamp_min(1e-30))))
