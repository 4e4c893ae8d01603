"""Fold eval-mode BatchNorm into the convolution that feeds it: ``w' = w·γ/√(v+ε)``, ``b' = (b−μ)·γ/√(v+ε) + β``.

Two ways to find the pairs, both leaving the model's structure (and type) in place — the BatchNorm module is
replaced by ``nn.Identity``, which exports to nothing:

- a torch.fx trace (works for fx ``GraphModule`` s such as ``convert`` produces, and for most plain model trees):
  a BatchNorm whose input is a Conv2d's output used by nothing else, each module called once;
- for models that do not trace: a Conv2d directly followed by a BatchNorm inside an ``nn.Sequential``.

Both look through the frozen resizes between a conv and its BatchNorm (``conv → SafeSubsample → BN``): pixel
selection and interpolation (weights summing to 1) commute with a per-channel affine map, so the fold is exact.

The separable N-Jet form is an ``nn.Sequential`` ending in its 1×1 combine: the fold goes into that conv.
"""

from __future__ import annotations

import itertools
from collections import Counter

import torch
from torch import nn

from ._graph import call_counts, is_call_of, trace_with_leaves

__all__ = ["fold_batchnorm", "fold_batchnorms"]

_BN = (nn.BatchNorm2d,)


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (its running statistics) into ``conv`` in place."""
    scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    inv = scale / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(inv.to(conv.weight.dtype).view(-1, *([1] * (conv.weight.dim() - 1))))
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * inv + shift
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorms(model: nn.Module, leaf_types: tuple[type, ...] = ()) -> list[tuple[str, str]]:
    """Fold every foldable ``Conv2d → BatchNorm2d`` pair of ``model`` in place; returns ``[(conv, bn), ...]`` names.

    ``leaf_types``: module types the fx trace must not enter (modules with shape arithmetic in ``forward``).
    """
    names = {id(m): n for n, m in model.named_modules()}
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs = _pairs_fx(model, leaf_types) + _pairs_sequential(model, names, leaf_types)
    done: list[tuple[str, str]] = []
    seen: set[str] = set()
    for conv_name, bn_name in pairs:
        if conv_name in seen or bn_name in seen:
            continue
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not _foldable(conv, bn) or uses[id(conv)] > 1 or uses[id(bn)] > 1:
            continue
        fold_batchnorm(conv, bn)
        model.set_submodule(bn_name, nn.Identity())
        seen.update((conv_name, bn_name))
        done.append((conv_name, bn_name))
    return done


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d and isinstance(bn, _BN) and bn.running_mean is not None
        and bn.running_var is not None and conv.out_channels == bn.num_features
    )


def _pairs_fx(model: nn.Module, leaf_types: tuple[type, ...]) -> list[tuple[str, str]]:
    graph = trace_with_leaves(model, lambda m: isinstance(m, leaf_types))
    if graph is None:
        return []
    calls = call_counts(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _BN):
            continue
        src = node.args[0] if node.args else None
        while is_call_of(src, model, leaf_types) and len(src.users) == 1 and src.args:  # through resizes
            src = src.args[0]
        if not is_call_of(src, model, nn.Conv2d) or len(src.users) != 1:
            continue
        if calls[src.target] == 1 and calls[node.target] == 1:
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _last_conv(mod: nn.Module, skip: tuple[type, ...]) -> nn.Module | None:
    """The conv whose output ``mod`` returns, looking through trailing resizes of nested ``nn.Sequential`` s."""
    while isinstance(mod, nn.Sequential):
        rest = [m for m in mod.children()]
        while rest and isinstance(rest[-1], skip):
            rest.pop()
        if not rest:
            return None
        mod = rest[-1]
    return mod if isinstance(mod, nn.Conv2d) else None


def _pairs_sequential(model: nn.Module, names: dict[int, str], skip: tuple[type, ...]) -> list[tuple[str, str]]:
    pairs = []
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.children())
        for a, b in itertools.pairwise(children):
            conv = _last_conv(a, skip)
            if conv is not None and isinstance(b, _BN) and id(conv) in names and id(b) in names:
                pairs.append((names[id(conv)], names[id(b)]))
    return pairs
