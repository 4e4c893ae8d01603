"""Filling a converted structure: every NJetConv2d gets the α and σ that reproduce the conv it replaced.

:mod:`njet_convert.surgery` builds the N-Jet structure (which basis, channels, crop, subsampling); this step fits
its kernels (docs/design.md, "Lossless conversion"); :func:`njet_convert.convert` runs them in that order. A
tensor-basis layer (``order="exact"``) gets the exact fit, a jet layer the least-squares fit with its σ search.
"""

from __future__ import annotations

from torch import nn

from njet_layers import NJetConv2d
from njet_layers.basis import is_tensor_basis

from ..surgery import ConvPlan, SurgeryState, plan_conv
from .exact_fit import fit_exact
from .kernel_fit import KernelFit
from .least_squares import fit_kernels

__all__ = ["fit_converted", "fit_layer"]


def fit_layer(layer: NJetConv2d, conv: nn.Module, k: float, sigma_grid: list[float] | None = None,
              plan: ConvPlan | None = None) -> KernelFit:
    """Fit ``layer`` to ``conv`` (its effective weight: the standardised one of a weight-standardised conv) and
    write the fit into the layer; ``plan`` is the conv's plan when the surgery already made it."""
    plan = plan if plan is not None else plan_conv(conv)
    if plan.reason:
        raise ValueError(f"conv of type {type(conv).__name__} cannot be fitted: {plan.reason}")
    weight = plan.weight()
    if is_tensor_basis(layer.order):
        if layer.dilation != plan.dilation:
            raise ValueError(f"a tensor-basis layer keeps the conv's dilation {plan.dilation}, got {layer.dilation}")
        fit = fit_exact(layer, weight)
    else:
        fit = fit_kernels(weight, layer.order, k, sigma_grid=sigma_grid, dilation=plan.dilation)
    fit.apply_to(layer)
    return fit


def fit_converted(model: nn.Module, state: SurgeryState) -> None:
    """Fit every NJetConv2d that the surgery put into ``model`` and record σ, error and conditioning."""
    modules = dict(model.named_modules())
    records = {r.name: r for r in state.report.layers}
    for njet_name, name in state.pairs.items():
        fit = fit_layer(modules[njet_name], state.originals[name], state.cfg.k, state.cfg.sigma_grid,
                        state.plans.get(name))
        record = records[njet_name]
        record.sigma, record.fit_error = fit.sigma, fit.error
        record.condition, record.rank, record.fragile = fit.condition, fit.rank, fit.fragile
