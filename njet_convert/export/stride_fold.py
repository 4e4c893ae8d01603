"""Fold a subsampling into the convolution before it, so that the export computes only the pixels it keeps.

A converted network subsamples *after* its N-Jet conv (``NJetConv2d → SafeSubsample``); frozen, that is a stride-1
conv computing every pixel and a subsampling keeping one in ``f²`` of them. Two forms fold:

- a strided slice: ``conv(x)[..., ::f, ::f]`` is ``conv`` with ``stride=f``. With ``ceil`` rounding the strided
  conv computes exactly the kept pixels (``floor((n - 1) / f) + 1 = ceil(n / f)`` outputs at ``0, f, 2f, …``) at
  ``1/f²`` of the cost;
- a fixed-size ``nearest`` resize whose kept rows and columns are a few arithmetic runs — a factor σ has moved a
  little off an integer (steps of 2 with a step of 3 every thirty-odd rows), or an anchored point's margin that
  keeps one pixel fewer than the slice would: a :class:`SampledConv`, one strided conv per row run × column run
  over the slice of the input it reads, as training computes it (:func:`njet_layers.sampled_conv.sampling_plan`),
  up to ``MAX_PIECES`` convs.

For the separable form the strides go into its ``s×1`` (rows) and ``1×s`` (columns) stages.
"""

from __future__ import annotations

import itertools
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from njet_layers.sampled_conv import Piece, sampling_plan

from ._graph import call_counts, is_call_of, trace_with_leaves
from .resize import FixedResize, StridedSubsample

__all__ = ["SampledConv", "fold_strides"]


class SampledConv(nn.Module):
    """A frozen stride-1 conv (an ``nn.Conv2d``, or the separable ``s×1 → 1×s → 1×1`` chain) computed only at the
    rows and columns a following ``nearest`` resize keeps: the pieces of ``plan`` concatenated in output order."""

    def __init__(self, conv: nn.Module, plan: list[list[Piece]]) -> None:
        super().__init__()
        self.conv, self.plan = conv, plan

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([torch.cat([self._piece(x, p) for p in band], -1) for band in self.plan], -2)

    def _piece(self, x: Tensor, piece: Piece) -> Tensor:
        rows, cols = piece
        part = x[..., rows.span, cols.span]
        if isinstance(self.conv, nn.Sequential):
            along_y, along_x, combine = self.conv
            part = F.conv2d(part, along_y.weight, along_y.bias, (rows.step, 1), (rows.padding, 0), 1, along_y.groups)
            part = F.conv2d(part, along_x.weight, along_x.bias, (1, cols.step), (0, cols.padding), 1, along_x.groups)
            out = combine(part)
        else:
            conv = self.conv
            out = F.conv2d(part, conv.weight, conv.bias, (rows.step, cols.step), (rows.padding, cols.padding),
                           conv.dilation, conv.groups)
        return out[..., rows.skip : rows.skip + rows.kept, cols.skip : cols.skip + cols.kept]

    def extra_repr(self) -> str:
        return f"pieces={sum(len(band) for band in self.plan)}"


def fold_strides(model: nn.Module, leaf_types: tuple[type, ...] = ()) -> list[tuple[str, str]]:
    """Fold every ``conv → StridedSubsample`` (``ceil``) and every ``conv → FixedResize``
    (``nearest``, few enough runs) of ``model`` in place; returns ``[(conv, subsampling), ...]``."""
    pairs = _pairs_fx(model, leaf_types) or _pairs_sequential(model)
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    done = []
    for conv_name, sub_name in pairs:
        conv, sub = model.get_submodule(conv_name), model.get_submodule(sub_name)
        if _stages(conv) is None or uses[id(conv)] > 1 or uses[id(sub)] > 1:
            continue
        folded = _fold_slice(conv, sub) if isinstance(sub, StridedSubsample) else _fold_resize(conv, sub)
        if folded is None:
            continue
        new_conv, rest = folded
        if new_conv is not conv:
            model.set_submodule(conv_name, new_conv)
        model.set_submodule(sub_name, rest)
        done.append((conv_name, sub_name))
    return done


def _fold_slice(conv: nn.Module, sub: StridedSubsample) -> tuple[nn.Module, nn.Module] | None:
    """The conv with the slice's stride, and nothing left of the slice."""
    if sub.step == 1 or sub.rounding != "ceil":
        return None
    along_y, along_x = _stages(conv)  # type: ignore[misc]
    along_y.stride = (sub.step, along_y.stride[1])
    along_x.stride = (along_x.stride[0], sub.step)
    return conv, nn.Identity()


def _fold_resize(conv: nn.Module, sub: FixedResize) -> tuple[nn.Module, nn.Module] | None:
    """The conv computed at the resize's kept pixels (a :class:`SampledConv`), or None where its plan gathers."""
    if sub.mode != "nearest" or sub.identity or not _keeps_size(conv):
        return None
    along_y, along_x = _stages(conv)  # type: ignore[misc]
    taps = (along_y.kernel_size[0], along_x.kernel_size[1])
    padding = (along_y.padding[0], along_x.padding[1])
    plan = sampling_plan(sub.in_size, taps, sub.rows, sub.cols, padding, (along_y.dilation[0], along_x.dilation[1]))
    return None if plan is None else (SampledConv(conv, plan), nn.Identity())


def _keeps_size(conv: nn.Module) -> bool:
    """Whether the (stride-1) conv's output has its input's size, so the resize's input size is the conv's."""
    along_y, along_x = _stages(conv)  # type: ignore[misc]
    return (2 * along_y.padding[0] == along_y.dilation[0] * (along_y.kernel_size[0] - 1)
            and 2 * along_x.padding[1] == along_x.dilation[1] * (along_x.kernel_size[1] - 1))


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


def _folds(mod: nn.Module) -> bool:
    return isinstance(mod, StridedSubsample | FixedResize)


def _pairs_fx(model: nn.Module, leaf_types: tuple[type, ...]) -> list[tuple[str, str]]:
    graph = trace_with_leaves(model, lambda m: isinstance(m, leaf_types) or _stages(m) is not None)
    if graph is None:
        return []
    calls = call_counts(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _folds(model.get_submodule(node.target)):
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
                if _folds(b) and _stages(a) is not None:
                    pairs.append((names[id(a)], names[id(b)]))
    return pairs
