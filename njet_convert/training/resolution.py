"""What learning σ did to a network's resolution and cost: σ stuck on a bound, feature maps shrunk to 1 px, and
multiply-adds per image — so that these show in the training metrics and summaries instead of passing silently.

A σ on its bound can still move back (the clamp lets inward gradients through) but no further out; a map of 1 px
has lost all spatial layout. Both are legal states that usually mean the learning rate of σ is too high or the
input is too small for the network; multiply-adds tell what a change of σ costs or saves (the paper: compute
follows σ, since safe subsampling shrinks the maps of coarse layers).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from njet_layers import NJetConv2d, SafeSubsample

__all__ = ["collapsed_maps", "multiply_adds", "resolution_health", "sigmas_at_bounds"]

_REL_TOL = 1e-3  # σ within 0.1 % of a bound counts as on it


def sigmas_at_bounds(model: nn.Module) -> dict[str, str]:
    """``{module name: "min" | "max"}`` for every NJetConv2d (or SafeSubsample with its own σ) whose σ sits on its
    lower or upper bound."""
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        own = isinstance(module, SafeSubsample) and module.source is None
        if not (isinstance(module, NJetConv2d) or own):
            continue
        sigma, (lo, hi) = float(module.sigma.detach()), module.sigma_bounds
        if sigma <= lo * (1 + _REL_TOL):
            out[name] = "min"
        elif sigma >= hi * (1 - _REL_TOL):
            out[name] = "max"
    return out


def collapsed_maps(sizes: dict[str, list[int]]) -> list[str]:
    """Names (from :func:`~njet_convert.training.plots.feature_sizes`) whose output map is 1 px in some axis."""
    return [name for name, size in sizes.items() if size and min(size) <= 1]


def resolution_health(model: nn.Module, sizes: dict[str, list[int]] | None) -> dict[str, list[str]]:
    """Metric entries: ``sigma_at_bound`` (``name=min|max``) and, when sizes are known, ``maps_at_1px``."""
    health = {"sigma_at_bound": [f"{n}={side}" for n, side in sigmas_at_bounds(model).items()]}
    if sizes is not None:
        health["maps_at_1px"] = collapsed_maps(sizes)
    return health


@torch.no_grad()
def multiply_adds(model: nn.Module, images: Tensor) -> int:
    """Multiply-adds per image of one forward pass of ``model`` on ``images`` (counted by
    :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products, as FLOPs / 2).

    N-Jet layers are counted as the dense ``s×s`` convolution they compose (``impl="dense"`` for the count), so the
    figure follows σ and map sizes, not which of the equivalent implementations ``impl="auto"`` would pick; the
    kernels are composed before counting (eval mode caches them), as at inference."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    impls = {m: m.impl for m in model.modules() if isinstance(m, NJetConv2d)}
    model.eval()
    try:
        for m in impls:
            m.impl = "dense"
        model(images)  # eval mode caches the composed kernels: the count is the inference cost, not composition
        with FlopCounterMode(display=False) as counter:
            model(images)
    finally:
        model.train(was_training)
        for m, impl in impls.items():
            m.impl = impl
    return math.ceil(counter.get_total_flops() / 2 / max(images.shape[0], 1))
