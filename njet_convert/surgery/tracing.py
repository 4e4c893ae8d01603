"""torch.fx tracing for conversion: timm's leaf lists, every conv and pool module kept whole, N-Jet modules as leaves.

Convs and pools must stay ``call_module`` nodes (timm's Conv2d subclasses would otherwise be traced through and lose
their identity); modules timm marks as untraceable stay leaves (their convs are then swapped by name, not in the
graph); SafeSubsample computes Python ints from σ, so it must never be traced through.
"""

from __future__ import annotations

from torch import fx, nn

from njet_layers import MatchSize, NJetConv2d, SafeSubsample

from ..errors import first_line

__all__ = ["ConvertTracer", "leaf_types", "trace"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _timm_leaves() -> tuple[list[type], list]:
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # timm is optional for plain torch / torchvision models
        return [], []
    return list(get_notrace_modules()), list(get_notrace_functions())


def leaf_types() -> tuple[type, ...]:
    """Module types the tracer never enters."""
    modules, _ = _timm_leaves()
    return (nn.Conv2d, *_POOLS, NJetConv2d, SafeSubsample, MatchSize, *modules)


class ConvertTracer(fx.Tracer):
    """fx tracer with the conversion's leaf modules (see module doc) and timm's leaf functions."""

    def __init__(self) -> None:
        _, functions = _timm_leaves()
        super().__init__(autowrap_functions=tuple(functions))
        self._leaves = leaf_types()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self._leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> tuple[fx.GraphModule | None, str]:
    """``(graph module, "")`` or ``(None, reason)`` when the model cannot be traced."""
    tracer = ConvertTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:
        return None, f"{type(err).__name__}: {first_line(err)}"[:200]
    name = model.__class__.__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    gm.training = model.training
    return gm, ""


def in_graph_modules(gm: fx.GraphModule) -> set[str]:
    """Qualified names of the modules called by the graph."""
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}


def restore_unused(gm: fx.GraphModule, source: nn.Module) -> list[str]:
    """Put back modules that hold parameters/buffers but that the traced forward never used (e.g. heads used only
    in another mode), at their old names, so no state_dict key of ``source`` is lost. Returns their names."""
    present = {n for n, _ in gm.named_modules()}
    restored = []
    for name, module in source.named_modules():
        if not name or name in present or any(name.startswith(r + ".") for r in restored):
            continue
        if next(module.parameters(), None) is None and next(module.buffers(), None) is None:
            continue
        parent = name.rpartition(".")[0]
        if parent and parent not in present:
            gm.add_submodule(parent, nn.Module())
        gm.add_submodule(name, module)
        present = {n for n, _ in gm.named_modules()}
        restored.append(name)
    return restored
