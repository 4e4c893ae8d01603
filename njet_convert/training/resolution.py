"""What learning σ did to a network's resolution and cost: σ stuck on a bound, feature maps shrunk to 1 px, and
multiply-adds per image — so that these show in the training metrics and summaries instead of passing silently.

A σ on its bound can still move back (the clamp lets inward gradients through) but no further out; a map of 1 px
has lost all spatial layout. Both are legal states that usually mean the learning rate of σ is too high or the
input is too small for the network; multiply-adds tell what a change of σ costs or saves (the paper: compute
follows σ, since safe subsampling shrinks the maps of coarse layers).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from njet_layers import NJetConv2d, SafeSubsample

__all__ = [
    "collapsed_maps",
    "multiply_adds",
    "resolution_health",
    "resolution_lines",
    "resolution_markdown",
    "sigmas_at_bounds",
    "stage_table",
]

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


def stage_table(model: nn.Module) -> list[dict[str, Any]]:
    """``{"name", "sigma", "factor"}`` of every subsampling point in network order: σ (of the N-Jet layer that
    drives it, or its own) and the factor it subsamples by — the network's resolution, stage by stage."""
    return [{"name": name, "sigma": float(m.sigma.detach()), "factor": m.factor}
            for name, m in model.named_modules() if isinstance(m, SafeSubsample)]


def resolution_lines(before: list[dict[str, Any]], after: list[dict[str, Any]], macs: tuple[int | None, int | None]
                     ) -> list[str]:
    """What fine-tuning did to resolution, one line per stage (``stage NAME: σ 0.475 → 0.95, factor 2 → 4``) and
    multiply-adds per image before → after when both are known."""
    lines = [f"stage {b['name']}: σ {b['sigma']:.3g} → {a['sigma']:.3g}, factor {b['factor']:.3g} → {a['factor']:.3g}"
             for b, a in zip(before, after, strict=False)]
    if None not in macs:
        lines.append(f"multiply-adds per image {macs[0]:,} → {macs[1]:,}")
    return lines


def resolution_markdown(before: list[dict[str, Any]], after: list[dict[str, Any]],
                        macs: tuple[int | None, int | None]) -> str:
    """The ``report.md`` section "Resolution learned in fine-tuning": σ and factor per stage before and after, then
    multiply-adds per image before → after ("" for a network without subsampling points or measured cost)."""
    if not before and None in macs:
        return ""
    rows = [f"| {b['name']} | {b['sigma']:.4g} | {a['sigma']:.4g} | {b['factor']:.4g} | {a['factor']:.4g} |"
            for b, a in zip(before, after, strict=False)]
    table = (["| stage | σ before | σ after | factor before | factor after |", "|---|---|---|---|---|", *rows]
             if rows else [])
    cost = [f"Multiply-adds per image: {macs[0]:,} → {macs[1]:,}."] if None not in macs else []
    return "\n".join(["## Resolution learned in fine-tuning", "", *table, *([""] if table and cost else []), *cost])


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
def multiply_adds(model: nn.Module, images: Tensor, form: Literal["exported", "dense"] = "exported") -> int:
    """Multiply-adds per image of one forward pass of ``model`` on ``images`` (counted by
    :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products, as FLOPs / 2).

    ``form="exported"`` counts every N-Jet layer in the form ``freeze`` / ``export_onnx`` give it by default (the
    separable chain where it saves 2× over the dense kernel: :func:`njet_convert.export.separable.auto_form`), so
    the figure is what the deployed network costs; ``"dense"`` counts the composed ``s×s`` kernel, which jumps from
    3×3 to 5×5 as σ crosses 0.5. Either way the figure follows σ and map sizes, not the path ``impl="auto"`` would
    train with; the kernels are composed before counting (eval mode caches them), as at inference."""
    from torch.utils.flop_counter import FlopCounterMode

    if form not in ("exported", "dense"):
        raise ValueError(f"form must be 'exported' or 'dense', got {form!r}")
    was_training = model.training
    layers = [m for m in model.modules() if isinstance(m, NJetConv2d)]
    impls = {m: m.impl for m in layers}
    saved: list[int] = []  # multiply-adds the exported form saves against the dense count, per layer call
    hooks = [m.register_forward_hook(_export_saving(saved)) for m in layers] if form == "exported" else []
    folded = ([p for p in model.modules() if isinstance(p, SafeSubsample) and _folds_into_conv(p)]
              if form == "exported" else [])
    model.eval()
    try:
        for m in impls:
            m.impl = "dense"
        for p in folded:
            p.train()  # its conv computes only the kept pixels, as the strided conv of the export does
        model(images)  # eval mode caches the composed kernels: the count is the inference cost, not composition
        saved.clear()
        with FlopCounterMode(display=False) as counter:
            model(images)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
        for m, impl in impls.items():
            m.impl = impl
    return math.ceil((counter.get_total_flops() / 2 - sum(saved)) / max(images.shape[0], 1))


def _folds_into_conv(point: SafeSubsample) -> bool:
    """Whether the export turns ``point`` and the N-Jet conv fused with it into one strided conv: a strided slice
    (:func:`njet_convert.export.freeze.slices_as_strided`) of a step above 1 with ``ceil`` rounding, the pairs
    :mod:`njet_convert.export.stride_fold` folds."""
    from njet_convert.export.freeze import slices_as_strided

    return (getattr(point, "_producer", None) is not None and point.rounding == "ceil" and round(point.factor) >= 2
            and slices_as_strided(point))


def _export_saving(saved: list[int]):
    """A forward hook adding, per call, the dense count minus the exported form's count of the layer's output."""
    from njet_convert.export.separable import auto_form, layer_costs

    def hook(layer: nn.Module, args: Any, out: Tensor) -> None:
        costs = layer_costs(layer)  # type: ignore[arg-type]
        per_pixel = costs.separable if auto_form(costs) == "separable" else costs.dense
        saved.append((costs.dense - per_pixel) * out.numel() // max(out.shape[1], 1))
    return hook
