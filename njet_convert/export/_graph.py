"""The fx view that the folding passes of :func:`~njet_convert.export.freeze` share: a graph with chosen leaves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from torch import fx, nn

__all__ = ["call_counts", "is_call_of", "trace_with_leaves"]


def trace_with_leaves(model: nn.Module, is_leaf: Callable[[nn.Module], bool]) -> fx.Graph | None:
    """``model``'s fx graph with modules for which ``is_leaf`` holds kept whole; None when it does not trace."""

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return is_leaf(m) or super().is_leaf_module(m, qualname)

    try:
        return _Tracer().trace(model)
    except Exception:  # an untraceable forward: callers fall back to scanning nn.Sequential containers
        return None


def call_counts(graph: fx.Graph) -> Counter:
    """How many times each submodule is called (a module called twice cannot be folded)."""
    return Counter(n.target for n in graph.nodes if n.op == "call_module")


def is_call_of(node: object, model: nn.Module, kind: type | tuple[type, ...]) -> bool:
    """Whether ``node`` calls a submodule of ``model`` that is an instance of ``kind``."""
    return (isinstance(node, fx.Node) and node.op == "call_module"
            and isinstance(model.get_submodule(str(node.target)), kind))
