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
from njet_layers.sampled_conv import Axis

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
    folded: dict[nn.Module, SafeSubsample] = {}  # layer -> the subsampling the export folds into it
    hooks = [m.register_forward_hook(_export_saving(saved, folded)) for m in layers] if form == "exported" else []
    model.eval()
    try:
        for m in impls:
            m.impl = "dense"
        sizes = _point_sizes(model, images)  # caches the composed kernels (eval mode): inference, not composition
        for p in [p for p, size in sizes.items() if form == "exported" and _folds_into_conv(p, size)]:
            p.train()  # its conv computes only the kept pixels, as the export's conv does
            folded[p._producer] = p
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


def _point_sizes(model: nn.Module, images: Tensor) -> dict[SafeSubsample, tuple | None]:
    """Per subsampling point, its (input, output) sizes on one forward pass of ``images``, as ``freeze`` records
    them (None: called at more than one size)."""
    from njet_convert.export.freeze import _record_sizes

    sizes, _ = _record_sizes(model, images)
    modules = dict(model.named_modules())
    return {p: sizes.get(name) for name, p in modules.items() if isinstance(p, SafeSubsample)}


def _folds_into_conv(point: SafeSubsample, sizes: tuple | None) -> bool:
    """Whether the export at these sizes computes only the pixels ``point`` keeps of the N-Jet conv fused with it
    (:func:`njet_convert.export.freeze.folds_into_conv`)."""
    from njet_convert.export.freeze import folds_into_conv

    layer = getattr(point, "_producer", None)
    return isinstance(layer, NJetConv2d) and folds_into_conv(point, sizes, layer)


def _export_saving(saved: list[int], folded: dict[nn.Module, SafeSubsample]):
    """A forward hook adding, per call, the count of the layer as run here minus the exported form's: the dense
    kernel at every output pixel, or, where a subsampling is folded in, at the windows of the pieces the layer
    computes (the form chosen as ``freeze`` chooses it, before any stride is folded in)."""
    from njet_convert.export.separable import auto_form, layer_costs

    def hook(layer: nn.Module, args: Any, out: Tensor) -> None:
        costs = layer_costs(layer)  # type: ignore[arg-type]
        separable = auto_form(costs) == "separable"
        if layer in folded:
            saved.append(_folded_saving(layer, folded[layer], args[0], separable))  # type: ignore[arg-type]
            return
        per_pixel = costs.separable if separable else costs.dense
        saved.append((costs.dense - per_pixel) * out.numel() // max(out.shape[1], 1))
    return hook


def _folded_saving(layer: NJetConv2d, point: SafeSubsample, x: Tensor, separable: bool) -> int:
    """The dense kernel at the windows of the pieces the fused layer computes (what the counter saw) minus the
    export's form of it: one strided conv over the whole input (a strided slice), else the same pieces
    (:class:`njet_convert.export.stride_fold.SampledConv`); the separable chain's row pass outputs every column
    of the slice it reads."""
    from njet_convert.export.freeze import kept_pixel_plan, slices_as_strided
    from njet_convert.export.separable import chain_costs, layer_costs

    size = (int(x.shape[-2]), int(x.shape[-1]))
    plan = kept_pixel_plan(point, layer, size)
    if plan is None:
        return 0
    rows, cols = point.output_size(size)
    taps = layer.kernel_size
    pieces = [(p, _windows(p.rows, taps, layer.dilation[0]), _windows(p.cols, taps, layer.dilation[1]))
              for band in plan for p in band]
    dense = layer_costs(layer).dense
    counted = sum(dense * wr * wc for _, wr, wc in pieces)
    chain = chain_costs(layer)
    strided = point.rounding == "ceil" and slices_as_strided(point, size)
    if strided:  # the strided conv computes the kept pixels from the whole input
        exported = (chain.rows * rows * size[1] + (chain.cols + chain.combine) * rows * cols
                    if separable else dense * rows * cols)
    else:
        exported = sum(chain.rows * wr * (p.cols.span.stop - p.cols.span.start)
                       + (chain.cols + chain.combine) * wr * wc if separable else dense * wr * wc
                       for p, wr, wc in pieces)
    return (counted - exported) * int(x.shape[0])


def _windows(axis: Axis, taps: int, dilation: int) -> int:
    """Windows a piece's strided conv computes along one axis (its run's, and those it crops)."""
    return (axis.span.stop - axis.span.start + 2 * axis.padding - dilation * (taps - 1) - 1) // axis.step + 1
