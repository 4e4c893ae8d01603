"""Joins: which subsampling points must always agree, and where a MatchSize is still needed.

Every tensor in the graph gets a *resolution signature*: the sequence of size-changing steps since the input
(a subsampling point, a crop, a fixed resize, ...). Where tensors meet (add, cat, mul, any op with several tensor
inputs) their signatures must be equal. Signatures of the same length whose non-point steps agree are made equal by
grouping their subsampling points position by position (union-find): grouped points share one σ source and one r,
so they keep producing equal sizes whatever σ becomes. Anything else (different lengths, different fixed steps,
points of different strides) is a join that needs a :class:`~njet_layers.MatchSize`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import fx, nn

__all__ = ["JoinAnalysis", "analyse_joins"]

GLOBAL = ("global",)  # broadcastable / fixed-size tensors: agree with anything
_SHAPE_METHODS = {"size", "dim", "numel", "__len__"}
_GLOBAL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear)


@dataclass
class JoinAnalysis:
    """Groups of point ids (``group_of``) and joins needing MatchSize: ``(join node, input index, reference)``."""

    group_of: dict[int, int] = field(default_factory=dict)
    mismatched: list[tuple[fx.Node, fx.Node, fx.Node]] = field(default_factory=list)
    joined_points: list[tuple[fx.Node, fx.Node, fx.Node]] = field(default_factory=list)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _inputs(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []

    def visit(a) -> None:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, list | tuple):
            for b in a:
                visit(b)
        elif isinstance(a, dict):
            for b in a.values():
                visit(b)

    visit(node.args)
    visit(node.kwargs)
    return out


def _shape_source(arg, res: dict) -> tuple | None:
    """The signature of the tensor whose ``.shape`` / ``.size()`` a size argument was read from."""
    seen = 0
    while isinstance(arg, fx.Node) and seen < 8:
        if arg.op == "call_function" and getattr(arg.target, "__name__", "") == "getattr" and arg.args[1] == "shape":
            return res.get(arg.args[0])
        if arg.op == "call_method" and arg.target == "size":
            return res.get(arg.args[0])
        arg = arg.args[0] if arg.args else None
        seen += 1
    return None


def analyse_joins(
    gm: fx.GraphModule,
    token_of: Callable[[fx.Node], tuple | None],
    stride_of: dict[int, int],
    always: bool = False,
) -> JoinAnalysis:
    """Propagate signatures (``token_of(node)`` gives a node's own size-changing step, if any) and group points.

    ``stride_of`` maps point ids to ``(stride, size function, rounding)``: points of equal stride are grouped (share
    σ); only equal keys guarantee equal sizes, otherwise the join also gets a MatchSize.
    """
    modules = dict(gm.named_modules())
    res: dict[fx.Node, tuple | None] = {}
    uf = _UnionFind()
    result = JoinAnalysis()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            res[node] = ()
            continue
        if node.op == "get_attr":
            res[node] = GLOBAL
            continue
        if node.op == "output":
            continue
        if _is_shape_query(node):
            res[node] = None
            continue
        tensors = [a for a in _inputs(node) if res.get(a) is not None]
        if not tensors:
            res[node] = None
            continue
        base = _join(node, tensors, res, uf, stride_of, result, always)
        res[node] = _apply_step(node, base, res, modules, token_of)
    for pid in stride_of:
        result.group_of[pid] = uf.find(pid)
    return result


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    return node.op == "call_function" and getattr(node.target, "__name__", "") == "getattr"


def _apply_step(node, base, res, modules, token_of) -> tuple:
    if base == GLOBAL:
        return GLOBAL
    if node.op == "call_module" and isinstance(modules.get(str(node.target)), _GLOBAL_MODULES):
        return GLOBAL
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.linear):
        return GLOBAL
    if node.op == "call_function" and node.target is F.interpolate:
        size = node.kwargs.get("size", node.args[1] if len(node.args) > 1 else None)
        if isinstance(size, fx.Node):
            src = _shape_source(size, res)
            return src if src is not None else (*base, ("resize", node.name))
        return (*base, ("resize", str(size), str(node.kwargs.get("scale_factor"))))
    token = token_of(node)
    return (*base, token) if token is not None else base


def _join(node, tensors: Iterable[fx.Node], res, uf, stride_of, result: JoinAnalysis, always: bool) -> tuple:
    sigs = [(t, res[t]) for t in tensors if res[t] != GLOBAL]
    if not sigs:
        return GLOBAL
    ref_node, ref = sigs[0]
    for other, sig in sigs[1:]:
        if other is ref_node:
            continue
        if sig == ref:
            if always and any(_is_point(t) for t in sig):
                result.joined_points.append((node, other, ref_node))
            continue
        unified = _unify(ref, sig, uf, stride_of)
        if unified == "exact":
            if always:
                result.joined_points.append((node, other, ref_node))
            continue
        result.mismatched.append((node, other, ref_node))
    return ref


def _is_point(token) -> bool:
    return isinstance(token, tuple) and len(token) == 2 and token[0] == "point"


def _unify(a: tuple, b: tuple, uf: _UnionFind, keys: dict[int, tuple]) -> str:
    """Group the points of two signatures position by position: ``"exact"`` when they then always agree,
    ``"shared"`` when the points share σ but their size functions differ (odd sizes: a MatchSize is still needed),
    ``""`` when they cannot be grouped."""
    if len(a) != len(b):
        return ""
    pairs, exact = [], True
    for x, y in zip(a, b, strict=True):
        if _is_point(x) and _is_point(y):
            kx, ky = keys.get(x[1]), keys.get(y[1])
            if kx is None or ky is None or kx[0] != ky[0]:  # different strides
                return ""
            exact = exact and kx == ky
            pairs.append((x[1], y[1]))
        elif x != y:
            return ""
    for p, q in pairs:
        uf.union(p, q)
    return "exact" if exact else "shared"


def fixed_tokens(gm: fx.GraphModule) -> dict[fx.Node, tuple]:
    """σ-independent size changes of the original graph's conv/pool modules (valid convs, kept strides, ...), as
    tokens naming their size function, so equal ops in parallel branches still compare equal."""
    from .convs import conv_output_size

    modules = dict(gm.named_modules())
    tokens: dict[fx.Node, tuple] = {}
    for node in gm.graph.nodes:
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(mod, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            continue
        k, s, p = (getattr(mod, a) for a in ("kernel_size", "stride", "padding"))
        d = getattr(mod, "dilation", 1)
        if isinstance(p, str):
            continue  # 'same' keeps the size; 'valid' convs are still told apart by the general rule below
        k, s, p, d = _pair(k), _pair(s if s is not None else k), _pair(p), _pair(d)
        ceil = bool(getattr(mod, "ceil_mode", False))
        sizes = tuple(conv_output_size(n, k[a], s[a], p[a], d[a], ceil) for a in (0, 1) for n in range(1, 33))
        if sizes != tuple(n for _ in (0, 1) for n in range(1, 33)):
            tokens[node] = ("fixed", sizes)
    return tokens


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
