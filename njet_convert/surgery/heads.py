"""Heads that flatten a feature map into a Linear layer: pin the map's size so that σ can move.

After safe subsampling a feature map's size follows σ, so a ``flatten -> Linear`` head (LeNet- and VGG-style
custom nets) would break as soon as σ moves in fine-tuning. Where a 4-D map with more than one pixel is flattened
into [N, features], an ``nn.AdaptiveAvgPool2d`` to the map's size at conversion goes in front of the flatten: the
identity at conversion (every window is one pixel), a resampling to the trained size afterwards. Global pools
already give 1×1 maps and are left alone. The sizes come from one forward pass on an example input (batch 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .state import SurgeryState

__all__ = ["flatten_sites", "pin_flattened_maps"]


def _is_batch_dim(arg: object) -> bool:
    """``x.size(0)`` / ``x.shape[0]`` / a literal: the leading size of a ``view``/``reshape`` into [N, -1]."""
    return isinstance(arg, int) or (isinstance(arg, fx.Node) and arg.op in ("call_method", "call_function"))


def _flattens_to_2d(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        mod = modules.get(str(node.target))
        return isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1
    args = node.args[1:]
    if node.target in (torch.flatten, "flatten"):
        start = args[0] if args else node.kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target in ("view", "reshape"):
        return len(args) == 2 and args[1] == -1 and _is_batch_dim(args[0])
    return False


_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish)
_FIXED_SIZE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_FIXED_SIZE_FUNCTIONS = (torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.adaptive_max_pool2d)


def _after_adaptive_pool(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether the flattened tensor comes from an adaptive pool (a size that σ cannot change)."""
    src = node.args[0]
    while isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(str(src.target)),
                                                                             _PASS_THROUGH):
        src = src.args[0]
    if not isinstance(src, fx.Node):
        return False
    if src.op == "call_module":
        return isinstance(modules.get(str(src.target)), _FIXED_SIZE)
    return src.op == "call_function" and src.target in _FIXED_SIZE_FUNCTIONS


def flatten_sites(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes of ``gm`` that flatten a feature map of σ-dependent size into ``[N, features]`` (nn.Flatten,
    flatten(x, 1), view(N, -1)); flattens right after an adaptive pool are left out."""
    modules = dict(gm.named_modules())
    return [n for n in gm.graph.nodes if n.args and isinstance(n.args[0], fx.Node) and _flattens_to_2d(n, modules)
            and not _after_adaptive_pool(n, modules)]


def _map_sizes(gm: fx.GraphModule, sites: list[fx.Node], example: Tensor) -> dict[str, tuple[int, int]]:
    """The spatial size of each site's input on ``example``, for 4-D inputs larger than 1×1."""
    mode = gm.training
    try:
        with torch.no_grad():
            ShapeProp(gm.eval()).propagate(example)
    finally:
        gm.train(mode)
    sizes = {}
    for node in sites:
        meta = node.args[0].meta.get("tensor_meta")
        shape = tuple(getattr(meta, "shape", ()))
        if len(shape) == 4 and shape[-2:] != (1, 1):
            sizes[node.name] = (int(shape[-2]), int(shape[-1]))
    return sizes


def pin_flattened_maps(state: SurgeryState, example: Tensor | None,
                       pinned: Mapping[str, tuple[int, int]] | None = None) -> dict[str, tuple[int, int]]:
    """Put the size pins in ``state.gm`` (see module doc); returns ``{flatten node name: (H, W)}``.

    ``pinned`` (from a saved model) re-creates known pins without an example; otherwise the sizes are measured on
    ``example``. Without either, flatten sites stay as they are and the report says so.
    """
    gm = state.gm
    if gm is None or state.cfg.subsample != "safe" or not state.strides:
        return {}
    sites = flatten_sites(gm)
    if pinned is not None:
        by_site = {site: (int(size[0]), int(size[1])) for site, size in pinned.items()}
    elif sites and example is not None:
        by_site = _map_sizes(gm, sites, example)
    else:
        for node in sites:
            state.report.skip(node.name, "flatten", "its input size follows σ; give convert() input_size= (or "
                              "calibration) to pin it for Linear heads")
        return {}
    pins = {node.name: by_site[node.name] for node in sites if node.name in by_site}
    for node in sites:
        if node.name in pins:
            _insert_pin(gm, node, pins[node.name], state)
    gm.graph.lint()
    gm.recompile()
    return pins


def _insert_pin(gm: fx.GraphModule, node: fx.Node, size: tuple[int, int], state: SurgeryState) -> None:
    name = state.unique_name(f"{node.name}_pin")
    gm.add_submodule(name, nn.AdaptiveAvgPool2d(size))
    with gm.graph.inserting_before(node):
        pin = gm.graph.call_module(name, (node.args[0],))
    node.replace_input_with(node.args[0], pin)
