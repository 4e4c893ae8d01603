"""Refit of a wide N-Jet layer in blocks of input channels: memory bounded whatever the width.

A conv is a sum over its input channels, ``y = Σ_b w_b * x_b``. The exact fit regresses ``y`` on the basis
responses of all input channels at once: one moment matrix of ``((I/g) · M)²`` per group and σ (5120² for a 3×3
conv with 512 inputs at order 3, ~210 MB in float64, and 16 samples per feature to fit it). Here the input channels
of each group are split into as few blocks as ``block_features`` basis features per block (memory) and
``min_samples_per_feature`` (the samples at hand) allow, and each block's basis weights
are fitted to *its own slice of the original conv* on the same inputs, ``y_b = w_b * x_b`` (computed from the
sampled patches with the original kernel placed in the filter frame): the covariance-weighted kernel fit of each
block with the covariance of that block's input patches. It is unbiased (the blocks do not compete for the output)
and ignores only the covariance between blocks; one block is the exact fit. Memory: ``G · F_b²`` per σ candidate
instead of ``G · F²``. The reported error is the blocks' summed residual over their summed target energy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..covariance import MomentStats
from ..patches import basis_responses, sampled_patches
from ..placement import embed_kernel
from .exact import MAX_PATCH_ELEMENTS
from .njet_refit import NJetRefit, features_per_group
from .sampling import sample_grid
from .strategy import RefitJob

__all__ = ["BlockwiseRefit", "channel_blocks"]


def channel_blocks(channels: int, basis: int, max_features: int) -> int:
    """The fewest blocks that split ``channels`` evenly with at most ``max_features`` features (channels × basis
    filters) per block."""
    for blocks in range(1, channels + 1):
        if channels % blocks == 0 and (channels // blocks) * basis <= max_features:
            return blocks
    return channels


class BlockwiseRefit(NJetRefit):
    """The wide-layer strategy (module doc): ``G = groups · blocks`` regression groups of ``F_b`` features."""

    name = "blockwise"

    def applies(self, job: RefitJob) -> bool:
        return super().applies(job) and hasattr(job.original, "weight")

    def blocks(self, job: RefitJob) -> int:
        """As few blocks as memory (``block_features``) and the samples (``min_samples_per_feature``) allow."""
        layer, opts = job.layer, job.options
        supported = _samples_at_least(job) // max(1, opts.min_samples_per_feature)
        return channel_blocks(layer.alpha.shape[1], layer.alpha.shape[2], min(opts.block_features, supported))

    def detail(self, job: RefitJob) -> str:
        return f"{self.blocks(job)} blocks of {self.group_features(job)} features"

    def group_features(self, job: RefitJob) -> int:
        return features_per_group(job.layer) // self.blocks(job)

    def to_groups(self, job: RefitJob, alpha: Tensor) -> Tensor:
        g, f, og = alpha.shape
        nb = self.blocks(job)
        return alpha.reshape(g * nb, f // nb, og)

    def to_layer(self, job: RefitJob, alpha: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        g, nb = job.layer.groups, self.blocks(job)
        return alpha.reshape(g, -1, alpha.shape[-1]), delta.reshape(g, nb, -1).sum(1)

    def statistics(self, job: RefitJob, bases: dict[float, Tensor], pad: int,
                   gen: torch.Generator) -> dict[float, MomentStats]:
        layer, orig, opts = job.layer, job.original, job.options
        g, nb, size = layer.groups, self.blocks(job), 2 * pad + 1
        weights = _block_weights(orig, layer, pad, nb)  # [g * nb, cb * s², O/g]
        stats = {s: MomentStats() for s in bases}
        for x in job.inputs:
            # positions on the layer's own output grid: the target comes from the same patches, not from ``orig``
            full = _output_grid(layer, x)
            offsets, sub = sample_grid(full, opts.max_positions, gen)
            counts = [-(-(full[a] - offsets[a]) // sub) for a in range(2)]
            starts = [offsets[a] * layer.stride[a] + layer.crop[a] for a in range(2)]
            steps = [sub * layer.stride[a] for a in range(2)]
            xp = F.pad(x, (pad, pad, pad, pad))
            chunk = max(1, MAX_PATCH_ELEMENTS // max(1, counts[0] * counts[1] * x.shape[1] * size * size))
            for i in range(0, x.shape[0], chunk):
                patches = sampled_patches(xp[i : i + chunk], size, starts, steps, counts, g)  # [g, L, (C/g) s²]
                n = patches.shape[1]
                patches = patches.reshape(g, n, nb, -1).transpose(1, 2).reshape(g * nb, n, -1)
                y = (patches @ weights).transpose(1, 2)  # each block's slice of the original conv: [G, O/g, L]
                for s, basis in bases.items():
                    stats[s].update(basis_responses(patches, basis), y)
        return stats


def _output_grid(layer, x: Tensor) -> list[int]:
    """The converted layer's own output size on input ``x``."""
    return [(x.shape[-2 + a] - 2 * layer.crop[a] - 1) // layer.stride[a] + 1 for a in range(2)]


def _samples_at_least(job: RefitJob) -> int:
    """A lower bound of the samples :meth:`BlockwiseRefit.statistics` takes (whatever the random offsets)."""
    total = 0
    for x in job.inputs:
        full = _output_grid(job.layer, x)
        _, sub = sample_grid(full, job.options.max_positions, torch.Generator())
        total += x.shape[0] * (full[0] // sub) * (full[1] // sub)
    return total


def _block_weights(orig, layer, pad: int, blocks: int) -> Tensor:
    """The original kernel placed in the ``2 * pad + 1`` frame, as ``[g * blocks, (C/g/blocks) * s², O/g]``."""
    from ...surgery.convs import plan_conv

    plan = plan_conv(orig)
    weight = plan.weight() if plan.weight is not None else orig.weight.detach()
    framed = embed_kernel(weight.to(layer.alpha.dtype), pad, tuple(getattr(orig, "dilation", (1, 1))))
    o, cg = framed.shape[:2]
    g = layer.groups
    framed = framed.reshape(g, o // g, blocks, cg // blocks, -1)  # [g, Og, nb, cb, s²]
    return framed.permute(0, 2, 3, 4, 1).reshape(g * blocks, -1, o // g)

