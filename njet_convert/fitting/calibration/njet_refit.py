"""The σ search every N-Jet layer refit shares; the strategies differ only in how they gather moment statistics.

For each σ candidate (``sigmas_per_size`` at the kernel's own filter size and as many one pixel larger) the layer's
real inputs are projected on the N-Jet basis and regressed onto the original conv's output on the same inputs
(:mod:`..covariance`). The σ with the lowest data-weighted output error wins; the layer keeps its previous fit when
that one is better on the data, or when there are too few samples per basis feature (order 4's exact fit fell from
100 % to 50 % agreement on 4 images). SafeSubsample modules linked to the layer keep their factor (their ``r``
follows the new σ), so feature-map sizes stay the original's. The mean output shift goes into the layer's bias or
the following batch norm.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from njet_layers import NJetConv2d, filter_radius, gaussian_basis

from ..covariance import MomentStats, solve_moments
from ..kernel_fit import KernelFit
from ..patches import embed_basis
from ..placement import kernel_radius
from .shifts import absorb_shift, residual_of
from .strategy import LayerResult, RefitJob

__all__ = ["NJetRefit", "candidate_sigmas", "features_per_group"]

_MIN_GAIN = 1e-3  # a new fit replaces a layer's previous one only if its data-weighted error is lower by this share


def features_per_group(layer: NJetConv2d) -> int:
    """Basis features per conv group: input channels per group times basis filters."""
    return layer.alpha.shape[1] * layer.alpha.shape[2]


class NJetRefit:
    """Base of the N-Jet layer strategies. Subclasses implement :meth:`statistics` (moment statistics per σ
    candidate, in ``G`` regression groups of ``F`` features) and the layout maps :meth:`to_groups` /
    :meth:`to_layer` between the layer's ``[g, (I/g) * M, O/g]`` weights and those groups."""

    name = ""

    def applies(self, job: RefitJob) -> bool:
        return isinstance(job.layer, NJetConv2d)

    def statistics(self, job: RefitJob, bases: dict[float, Tensor], pad: int,
                   gen: torch.Generator) -> dict[float, MomentStats]:
        raise NotImplementedError

    def to_groups(self, job: RefitJob, alpha: Tensor) -> Tensor:
        """Layer layout ``[g, F, Og]`` -> regression layout (identity by default)."""
        return alpha

    def to_layer(self, job: RefitJob, alpha: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """Regression layout -> layer layout ``[g, F, Og]`` and offset ``[g, Og]`` (identity by default)."""
        return alpha, delta

    def detail(self, job: RefitJob) -> str:
        """How the layer was fitted, for the report ("" by default)."""
        return ""

    def group_features(self, job: RefitJob) -> int:
        """Features per regression group (what the sample count is judged against)."""
        return features_per_group(job.layer)

    def refit(self, job: RefitJob) -> LayerResult:
        layer, opts = job.layer, job.options
        if not job.inputs:
            return LayerResult(job.name, self.name, skipped="not reached by the calibration data")
        per_size = opts.sigmas_per_size if features_per_group(layer) <= opts.wide_search_features else 1
        candidates = candidate_sigmas(layer, job.original, layer.k, per_size)
        can_shift = opts.bias_correction and (layer.bias is not None or job.norm is not None)
        bases, pad = _bases(layer, candidates)
        stats = self.statistics(job, bases, pad, torch.Generator().manual_seed(opts.seed))
        current = round(float(layer.sigma.detach()), 6)
        prev = self.to_groups(job, current_alpha(layer))
        res_prev, delta_prev = residual_of(stats[current], prev, centred=can_shift)
        best = (_relative(res_prev, stats[current].yy), current, prev, delta_prev)
        needed = opts.min_samples_per_feature * self.group_features(job)
        if stats[current].count < needed:
            return self._finish(job, best, can_shift,
                                f"too few samples ({stats[current].count} < {needed}): kept the previous fit")
        for s in candidates:
            alpha, delta, residual, yy = solve_moments(stats[s], centred=can_shift, ridge=opts.ridge)
            err = _relative(residual, yy)
            if err < best[0] * (1 - _MIN_GAIN):
                best = (err, s, alpha, delta)
        return self._finish(job, best, can_shift)

    def _finish(self, job: RefitJob, best: tuple, can_shift: bool, skipped: str = "") -> LayerResult:
        err, sigma, alpha, delta = best
        layer = job.layer
        alpha, delta = self.to_layer(job, alpha, delta)
        factors = [(ss, ss.factor) for ss in job.subsamplers]
        o, i, m = layer.alpha.shape
        layer.alpha.copy_(alpha.transpose(1, 2).reshape(o, i, m).to(layer.alpha.dtype))
        layer.log_sigma.copy_(torch.tensor(math.log(sigma), dtype=layer.log_sigma.dtype))
        if can_shift:
            absorb_shift(layer, job.norm, delta.reshape(o))
        for ss, factor in factors:  # keep the feature-map sizes: the factor must not follow the new σ here
            if factor > 1:
                ss.start_at(factor)
        fit = KernelFit(alpha=layer.alpha.detach().clone(), sigma=float(sigma), error=math.sqrt(err))
        return LayerResult(job.name, self.name, error=math.sqrt(err), fit=fit, skipped=skipped,
                           detail=self.detail(job))


def current_alpha(layer: NJetConv2d) -> Tensor:
    """The layer's α as ``[g, (I/g) * M, O/g]`` (the regression layout)."""
    o, i, m = layer.alpha.shape
    g = layer.groups
    return layer.alpha.detach().double().reshape(g, o // g, i * m).transpose(1, 2)


def candidate_sigmas(layer: NJetConv2d, orig: nn.Module, k: float, per_size: int) -> list[float]:
    """The layer's current σ plus ``per_size`` σ evenly spread over the scales whose filter is the kernel's own size,
    and as many one pixel larger, inside the layer's bounds.

    Which kernel directions an order-3 basis misses on a small support changes with σ (on 3×3 it always lacks one
    of the four even-even directions, but which one depends on σ), so the data decides among several σ per size.
    """
    size = tuple(getattr(orig, "kernel_size", (3, 3)))
    dilation = tuple(getattr(orig, "dilation", (1, 1)))
    need = max(1, kernel_radius(size, dilation))
    lo, hi = layer.sigma_bounds
    out = {round(float(layer.sigma.detach()), 6)}
    for radius in (need, need + 1):
        low, high = max((radius - 1) / k, lo), min(radius / k, hi)
        for j in range(1, per_size + 1):
            sigma = round(low + (high - low) * j / per_size, 6)
            if lo <= sigma <= hi and filter_radius(sigma, k) == radius:
                out.add(sigma)
    return sorted(out)


def _bases(layer: NJetConv2d, candidates: list[float]) -> tuple[dict[float, Tensor], int]:
    """Every candidate's basis, zero-padded to the largest candidate's size, and that radius."""
    bases = {s: gaussian_basis(layer.order, torch.tensor(s, dtype=torch.float64), layer.k,
                               radius=layer.radius_at(s)).to(torch.float32).to(layer.alpha.device)
             for s in candidates}
    pad = max((b.shape[-1] - 1) // 2 for b in bases.values())
    return {s: embed_basis(b, pad) for s, b in bases.items()}, pad


def _relative(residual: Tensor, yy: Tensor) -> float:
    return float(residual.sum() / yy.sum().clamp_min(1e-30))
