"""What the calibration learns from the network's structure: the order the layers run in, the batch norm after each,
the SafeSubsample modules linked to a layer's σ, and the plain 1×1 convs it can refit."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from njet_layers import NJetConv2d, SafeSubsample
from njet_layers.basis import is_tensor_basis

__all__ = ["check_pairs", "device_of", "linked_subsamplers", "network_order", "pointwise_layers"]


def network_order(model: nn.Module, names: Iterable[str], batch: Tensor) -> tuple[list[str], dict[str, nn.Module]]:
    """``names`` in execution order, and the BatchNorm that directly consumes each one's output (possibly through a
    SafeSubsample)."""
    names = list(names)
    modules = dict(model.named_modules())
    order: list[str] = []
    outputs: dict[int, tuple[str, Tensor]] = {}
    norms: dict[str, nn.Module] = {}
    hooks = []
    for name in names:
        def post(mod, args, out, name=name):
            if name not in order:
                order.append(name)
            outputs[id(out)] = (name, out)  # the tensor is kept alive so that its id cannot be reused
        hooks.append(modules[name].register_forward_hook(post))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            def pre(mod, args):
                source, _ = outputs.get(id(args[0]), (None, None))
                if source is not None and source not in norms:
                    norms[source] = mod
            hooks.append(m.register_forward_pre_hook(pre))
        elif isinstance(m, SafeSubsample):
            def passes(mod, args, out):  # subsampling commutes with a per-channel shift: look through it
                if id(args[0]) in outputs:
                    outputs[id(out)] = (outputs[id(args[0])][0], out)
            hooks.append(m.register_forward_hook(passes))
    try:
        model(batch[:1])
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in names if n not in order]
    return order + missing, norms


def pointwise_layers(converted: nn.Module, original: nn.Module, pairs: Mapping[str, str]) -> list[str]:
    """Plain 1×1 convs (no padding, no dilation) present under the same name in both networks, not converted."""
    orig_modules = dict(original.named_modules())
    out = []
    for name, m in converted.named_modules():
        if (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.padding == (0, 0) and name not in pairs
                and type(orig_modules.get(name)) is nn.Conv2d):
            out.append(name)
    return out


def linked_subsamplers(model: nn.Module) -> dict[int, list[SafeSubsample]]:
    """The SafeSubsample modules whose factor follows a layer's σ, by ``id`` of that layer."""
    linked: dict[int, list[SafeSubsample]] = {}
    for m in model.modules():
        if isinstance(m, SafeSubsample) and m.source is not None:
            linked.setdefault(id(m.source), []).append(m)
    return linked


def check_pairs(pairs: Mapping[str, str], modules: dict, orig_modules: dict) -> None:
    """``ValueError`` unless every pair maps an ``NJetConv2d`` of the converted model to a module of the original."""
    for name, orig_name in pairs.items():
        if not isinstance(modules.get(name), NJetConv2d):
            raise ValueError(f"pairs: {name!r} is not an NJetConv2d of the converted model")
        if is_tensor_basis(modules[name].order):
            raise ValueError(f"pairs: {name!r} has a tensor-product basis (order 'exact'), whose fit is exact "
                             "already; calibration refits the paper's jet only")
        if orig_name not in orig_modules:
            raise ValueError(f"pairs: {orig_name!r} is not a module of the original model")


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
