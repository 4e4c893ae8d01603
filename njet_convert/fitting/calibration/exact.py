"""Exact refit of an N-Jet layer whose moment matrix is small enough to form per conv group (depthwise convs, dense
convs up to ``max_features`` basis features per group).

Every σ candidate's basis responses are regressed onto the original conv applied to the same (converted-network)
inputs, ``y = conv(x')``: the covariance-weighted kernel fit ``alpha = (Bᵀ C B)⁻¹ Bᵀ C w`` with C the covariance
of the layer's real input patches, solved without forming C (:mod:`..covariance`). The sampled input patches are
extracted once per batch at the largest candidate radius (:mod:`..patches`); each candidate's statistics are then
projections of the patches' own moments when those are cheaper to accumulate (depthwise layers: one ``s² × s²``
matrix per channel for all candidates), else each candidate's responses are one matrix product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from njet_layers import NJetConv2d

from ..covariance import MomentStats
from ..patches import PatchMoments, basis_responses, group_targets, sampled_patches
from .njet_refit import NJetRefit, features_per_group
from .options import CalibrationOptions
from .sampling import sampled_target, window_geometry
from .strategy import RefitJob

__all__ = ["MAX_PATCH_ELEMENTS", "ExactRefit", "candidate_stats"]

MAX_PATCH_ELEMENTS = 2**24  # patches extracted at once (64 MB in float32): larger batches go in image chunks
_MAX_PATCH_MOMENTS = 2**25  # entries of the shared patch moment matrices (256 MB in float64)


class ExactRefit(NJetRefit):
    """One moment matrix of ``features²`` per conv group and σ candidate: the exact covariance-weighted fit."""

    name = "exact"

    def applies(self, job: RefitJob) -> bool:
        return super().applies(job) and features_per_group(job.layer) <= job.options.max_features

    def statistics(self, job: RefitJob, bases: dict[float, Tensor], pad: int,
                   gen: torch.Generator) -> dict[float, MomentStats]:
        return candidate_stats(job.layer, job.original, job.inputs, bases, pad, job.options, gen)


def candidate_stats(layer: NJetConv2d, orig: nn.Module, inputs: list[Tensor], bases: dict[float, Tensor], pad: int,
                    opts: CalibrationOptions, gen: torch.Generator) -> dict[float, MomentStats]:
    """Moment statistics of every σ candidate's basis responses (``bases``: all zero-padded to ``2 * pad + 1``)."""
    size = 2 * pad + 1
    m, q, c = next(iter(bases.values())).shape[0], size * size, layer.alpha.shape[1]
    # multiply-adds per sample: the patch moments once vs every candidate's responses and their moments
    shared = ((c * q) ** 2 <= len(bases) * (c * q * m + (c * m) ** 2)
              and layer.groups * (c * q) ** 2 <= _MAX_PATCH_MOMENTS)
    moments, stats = PatchMoments(), {s: MomentStats() for s in bases}
    for x in inputs:
        ys, offsets, sub = sampled_target(orig, x, opts.max_positions, gen)
        starts, steps = window_geometry(layer, x.shape[-2:], pad, ys.shape[-2:], offsets, sub)
        xp = F.pad(x, (pad, pad, pad, pad))
        yg = group_targets(ys, layer.groups)
        per_image = ys.shape[-2] * ys.shape[-1]
        chunk = max(1, MAX_PATCH_ELEMENTS // max(1, per_image * x.shape[1] * q))  # images per patch extraction
        for i in range(0, x.shape[0], chunk):
            patches = sampled_patches(xp[i : i + chunk], size, starts, steps, ys.shape[-2:], layer.groups)
            y = yg[..., i * per_image : (i + chunk) * per_image]
            if shared:
                moments.update(patches, y)
                continue
            for s, basis in bases.items():
                stats[s].update(basis_responses(patches, basis), y)
    return {s: moments.project(b) for s, b in bases.items()} if shared else stats
