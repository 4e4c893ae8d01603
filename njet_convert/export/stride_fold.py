"""Fold a strided slice into the convolution before it: ``conv(x)[..., ::f, ::f]`` is ``conv`` with ``stride=f``.

A converted network subsamples *after* its N-Jet conv (``NJetConv2d → SafeSubsample``); frozen, that is a stride-1
conv computing every pixel and a slice keeping one in ``f²`` of them. With ``ceil`` rounding the strided conv
computes exactly the kept pixels (``floor((n - 1) / f) + 1 = ceil(n / f)`` outputs at ``0, f, 2f, …``) at ``1/f²``
of the cost. For the separable form the stride goes into its ``s×1`` (rows) and ``1×s`` (columns) stages.
"""

from __future__ import annotations

import itertools
from collections import Counter

from torch import nn

from ._graph import call_counts, is_call_of, trace_with_leaves
from .resize import StridedSubsample

__all__ = ["fold_strides"]


def fold_strides(model: nn.Module, leaf_types: tuple[type, ...] = ()) -> list[tuple[str, str]]:
    """Fold every ``conv → StridedSubsample(ceil)`` of ``model`` in place; returns ``[(conv, subsample), ...]``."""
    pairs = _pairs_fx(model, leaf_types) or _pairs_sequential(model)
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    done = []
    for conv_name, sub_name in pairs:
        conv, sub = model.get_submodule(conv_name), model.get_submodule(sub_name)
        stages = _stages(conv)
        if stages is None or uses[id(conv)] > 1 or uses[id(sub)] > 1 or sub.rounding != "ceil" or sub.step == 1:
            continue
        along_y, along_x = stages
        along_y.stride = (sub.step, along_y.stride[1])
        along_x.stride = (along_x.stride[0], sub.step)
        model.set_submodule(sub_name, nn.Identity())
        done.append((conv_name, sub_name))
    return done


def _stages(mod: nn.Module) -> tuple[nn.Conv2d, nn.Conv2d] | None:
    """The convs that set the row and the column stride: the conv itself, or the separable form's first two."""
    if type(mod) is nn.Conv2d and mod.stride == (1, 1) and mod.padding_mode == "zeros":
        return mod, mod
    if isinstance(mod, nn.Sequential) and len(mod) == 3 and all(type(m) is nn.Conv2d for m in mod):
        y, x, mix = mod
        if y.kernel_size[1] == 1 and x.kernel_size[0] == 1 and mix.kernel_size == (1, 1):
            if y.stride == x.stride == mix.stride == (1, 1):
                return y, x
    return None


def _pairs_fx(model: nn.Module, leaf_types: tuple[type, ...]) -> list[tuple[str, str]]:
    graph = trace_with_leaves(model, lambda m: isinstance(m, leaf_types) or _stages(m) is not None)
    if graph is None:
        return []
    calls = call_counts(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), StridedSubsample):
            continue
        src = node.args[0] if node.args else None
        while is_call_of(src, model, nn.Identity) and len(src.users) == 1:  # folded BatchNorms
            src = src.args[0]
        if is_call_of(src, model, nn.Module) and len(src.users) == 1 and calls[src.target] == calls[node.target] == 1:
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    names = {id(m): n for n, m in model.named_modules()}
    pairs = []
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for a, b in itertools.pairwise(seq.children()):
                if isinstance(b, StridedSubsample) and _stages(a) is not None:
                    pairs.append((names[id(a)], names[id(b)]))
    return pairs
