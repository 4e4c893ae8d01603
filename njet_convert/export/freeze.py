"""``freeze``: an N-Jet network → a plain PyTorch inference model (σ frozen, kernels baked, no njet modules).

- every :class:`~njet_layers.NJetConv2d` becomes an ``nn.Conv2d`` with the composed ``s×s`` kernel, or the
  separable basis-first chain of plain convs when that is cheaper (:mod:`.separable`; ``form=``);
- every :class:`~njet_layers.SafeSubsample` becomes a fixed-factor resize (:mod:`.resize`): a strided slice
  ``x[..., ::f, ::f]`` where exactly equivalent (``nearest`` mode, integer factor, ``ceil`` rounding — any input
  size), otherwise the *fixed-size* form recorded on ``example_input`` or the *scale-factor* form that computes
  the output size from the input at run time (``dynamic_spatial=True``, or no ``example_input``);
- every :class:`~njet_layers.MatchSize` becomes a resize to the reference (fixed-size when recorded, else dynamic);
- BatchNorm is folded into the preceding conv (:mod:`.bn_fold`: fx trace, else ``Conv→BN`` in ``nn.Sequential``),
  and a strided slice into the conv before it (:mod:`.stride_fold`: a strided conv computes only the kept pixels).

Why an example input: a SafeSubsample's output size depends on its input size, which only a forward pass knows;
with it, ``freeze`` records every size and can bake constant sizes (a static ONNX graph) and check the frozen
model against the N-Jet model (≤ 1e-5 relative, or within 8× the N-Jet model's own float32 rounding where that
is larger; else ``ValueError`` with the figures). The model passed in is
never modified. The result is in eval mode and carries a :class:`FreezeReport` as ``frozen.freeze_report``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from njet_layers import MatchSize, NJetConv2d, SafeSubsample
from njet_layers.sampled_conv import Piece, sampling_plan

from ..record import record_of
from .adaptive_pool import MatrixAdaptiveAvgPool2d, needs_matrix_pool
from .bn_fold import fold_batchnorms
from .resize import FixedResize, ResizeTo, ScaleResize, StridedSubsample, _nearest_index, _out_size
from .separable import DEFAULT_SEPARABLE_GAIN, auto_form, dense_form, layer_costs, separable_form
from .stride_fold import fold_strides

__all__ = ["FreezeReport", "FrozenLayer", "FrozenResize", "folds_into_conv", "freeze", "kept_pixel_plan",
           "max_relative_error", "njet_modules", "slices_as_strided"]

Form = Literal["auto", "dense", "separable"]
FREEZE_RTOL = 1e-5
NOISE_FACTOR = 8.0  # a frozen model may differ from the N-Jet model by this many times the latter's float32 noise
_DYNAMIC_CHECK = 1024  # input sizes checked before a subsampling becomes a strided slice
_RESIZE_LEAVES = (FixedResize, ResizeTo, ScaleResize, StridedSubsample)


@dataclass
class FrozenLayer:
    """One frozen N-Jet conv: its scale, size and the inference form chosen (``dense`` or ``separable``)."""

    name: str
    order: int | tuple[int, int]  # the basis index set (jet order, or (n_x, n_y) of a tensor product)
    k: float
    sigma: float
    kernel_size: int
    in_channels: int
    out_channels: int
    groups: int
    stride: tuple[int, int]
    form: str
    dense_cost: int
    separable_cost: int


@dataclass
class FrozenResize:
    """One frozen SafeSubsample or MatchSize: what it became (``strided``, ``fixed``, ``scale``, ``resize_to``)."""

    name: str
    kind: str
    mode: str
    form: str
    factor: float | None = None
    rounding: str | None = None
    source: str | None = None
    sizes: tuple | None = None
    r: float | None = None  # the SafeSubsample's law, factor = 2 ** (sigma / r + shift), at freezing time
    shift: float | None = None
    sigma: float | None = None
    anchor: float | None = None  # the original stride whose sizes and grid a converted point keeps near σ₀


@dataclass
class FreezeReport:
    """What ``freeze`` did: per-layer forms, resizes, folded BatchNorms and the check against the N-Jet model."""

    layers: list[FrozenLayer] = field(default_factory=list)
    resizes: list[FrozenResize] = field(default_factory=list)
    folded_batchnorms: list[tuple[str, str]] = field(default_factory=list)
    folded_strides: list[tuple[str, str]] = field(default_factory=list)
    dynamic_spatial: bool = False
    max_rel_error: float | None = None
    tolerance: float | None = None  # what the check allowed (FREEZE_RTOL, or the N-Jet model's own float32 noise)
    source_architecture: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self) -> str:
        """A plain-text table: one row per frozen N-Jet layer and per resize."""
        rows = [f"{'layer':32} {'σ':>7} {'s':>3} {'form':>9} {'dense MACs':>11} {'sep. MACs':>10}"]
        for lay in self.layers:
            rows.append(f"{lay.name:32} {lay.sigma:7.3f} {lay.kernel_size:3d} {lay.form:>9} "
                        f"{lay.dense_cost:11d} {lay.separable_cost:10d}")
        for rs in self.resizes:
            factor = "" if rs.factor is None else f" factor={rs.factor:.4g}"
            rows.append(f"{rs.name:32} {rs.kind} -> {rs.form} ({rs.mode}{factor})")
        error = "not checked" if self.max_rel_error is None else f"{self.max_rel_error:.3g}"
        rows.append(f"batch norms folded: {len(self.folded_batchnorms)}; max rel. error vs N-Jet: {error}")
        return "\n".join(rows)


def njet_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that come from ``njet_layers`` (empty for a frozen model)."""
    return [n or "<root>" for n, m in model.named_modules() if type(m).__module__.startswith("njet_layers")]


@torch.no_grad()
def freeze(
    model: nn.Module,
    example_input: Tensor | None = None,
    *,
    dynamic_spatial: bool = False,
    form: Form = "auto",
    separable_gain: float = DEFAULT_SEPARABLE_GAIN,
    fold_bn: bool = True,
    fold_stride: bool = True,
    check: bool = True,
) -> nn.Module:
    """A plain-PyTorch, eval-mode copy of ``model`` with every N-Jet module frozen (``model`` is not modified).

    Args:
        model: an N-Jet network (an fx ``GraphModule`` from ``convert`` or any module tree); a model that is
            already frozen is copied (its ``freeze_report`` kept).
        example_input: a batch the model accepts. Records each resize's sizes (fixed-size form) and checks the
            frozen model against ``model`` on it (see ``check``; ``ValueError`` with the figures).
        dynamic_spatial: use the scale-factor form for every resize that is not a strided slice, so the frozen
            model accepts any spatial size. Without ``example_input`` this form is used anyway.
        form: ``"dense"`` s×s convs, ``"separable"`` basis-first chains, or ``"auto"``: separable where it needs
            ``separable_gain`` times fewer multiply-adds than dense (see :mod:`njet_convert.export.separable`).
        fold_bn: fold BatchNorm into the preceding conv.
        fold_stride: turn ``conv → strided slice`` into a strided conv (computes only the kept pixels).
        check: compare with ``model`` on ``example_input``: within 1e-5 relative, or, where the N-Jet model's own
            float32 result is less precise (large cancelling α, deep nets with random α), within 8× its distance from
            its float64 result — a real mismatch is refused, float32's limits are not.
    """
    _check_args(model, example_input, form, separable_gain)
    work = copy.deepcopy(model).eval()
    names = {id(m): n for n, m in work.named_modules()}
    sizes, reference = _record_sizes(work, example_input) if example_input is not None else ({}, None)
    dynamic = dynamic_spatial or example_input is None
    old = getattr(model, "freeze_report", None)
    report = FreezeReport(dynamic_spatial=dynamic, source_architecture=_architecture(model, old))
    if isinstance(old, FreezeReport):
        report.layers, report.resizes = list(old.layers), list(old.resizes)
    replacements: dict[str, nn.Module] = {}
    for name, mod in work.named_modules():
        if isinstance(mod, NJetConv2d):
            replacements[name] = _freeze_conv(name, mod, form, separable_gain, report)
        elif isinstance(mod, SafeSubsample):
            replacements[name] = _freeze_subsample(name, mod, sizes.get(name), dynamic, names, report)
        elif isinstance(mod, MatchSize):
            replacements[name] = _freeze_match(name, mod, sizes.get(name), dynamic, report)
        elif type(mod) is nn.AdaptiveAvgPool2d and not dynamic and sizes.get(name):
            size_in, size_out = sizes[name]  # type: ignore[misc]
            if needs_matrix_pool(size_in, size_out):  # ONNX: only multiples export as AveragePool
                replacements[name] = MatrixAdaptiveAvgPool2d(size_in, size_out)
                report.resizes.append(FrozenResize(name, "AdaptiveAvgPool2d", "average", "matrix",
                                                   sizes=(size_in, size_out)))
    for name, new in replacements.items():
        work = new if name == "" else _replace(work, name, new)
    leftover = [(n, type(m).__name__) for n, m in work.named_modules() if type(m).__module__.startswith("njet_layers")]
    if leftover:
        raise ValueError(f"freeze does not know how to freeze module '{leftover[0][0]}' ({leftover[0][1]})")
    if fold_bn:
        report.folded_batchnorms = fold_batchnorms(work, _RESIZE_LEAVES)
    if fold_stride:
        report.folded_strides = fold_strides(work, _RESIZE_LEAVES)
    if example_input is not None and check:
        report.max_rel_error, report.tolerance = _check_match(reference, work, example_input, model)
    work.freeze_report = report  # type: ignore[assignment]
    return work.eval()


def _check_args(model: nn.Module, example_input: Tensor | None, form: str, gain: float) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_input is not None and not isinstance(example_input, Tensor):
        raise ValueError(f"example_input must be a tensor or None, got {type(example_input).__name__}")
    if form not in ("auto", "dense", "separable"):
        raise ValueError(f"form must be 'auto', 'dense' or 'separable', got {form!r}")
    if not gain > 0 or not math.isfinite(gain):
        raise ValueError(f"separable_gain must be a positive number, got {gain!r}")


def _architecture(model: nn.Module, old: object) -> str:
    record = record_of(model)
    if record is not None:
        return record.source.name
    if isinstance(old, FreezeReport) and old.source_architecture:
        return old.source_architecture
    return type(model).__name__


def _replace(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    root.set_submodule(name, new)
    return root


def _record_sizes(work: nn.Module, x: Tensor) -> tuple[dict[str, tuple | None], Any]:
    """Run the (unfrozen) model once: its output, and per resize or adaptive pool the (input, output) sizes."""
    seen: dict[str, tuple | None] = {}
    handles = []

    def hook(name: str) -> Callable:
        def record(mod: nn.Module, args: tuple, out: Tensor) -> None:
            entry = (tuple(args[0].shape[-2:]), tuple(out.shape[-2:]))
            seen[name] = entry if seen.get(name, entry) == entry else None
        return record

    for name, mod in work.named_modules():
        if isinstance(mod, (SafeSubsample, MatchSize, nn.AdaptiveAvgPool2d)):
            handles.append(mod.register_forward_hook(hook(name)))
    try:
        out = work(x)
    finally:
        for h in handles:
            h.remove()
    return seen, out


def _freeze_conv(name: str, layer: NJetConv2d, form: str, gain: float, report: FreezeReport) -> nn.Module:
    costs = layer_costs(layer)
    chosen = form if form != "auto" else auto_form(costs, gain)
    try:
        new = separable_form(layer) if chosen == "separable" else dense_form(layer)
    except ValueError as err:
        raise ValueError(f"cannot freeze '{name}' (NJetConv2d): {err}") from None
    report.layers.append(FrozenLayer(
        name, layer.order, layer.k, float(layer.sigma.detach()), layer.kernel_size, layer.in_channels,
        layer.out_channels, layer.groups, layer.stride, chosen, costs.dense, costs.separable,
    ))
    return new


def _freeze_subsample(
    name: str, mod: SafeSubsample, sizes: tuple | None, dynamic: bool, names: dict[int, str], report: FreezeReport
) -> nn.Module:
    factor = mod.factor
    step = round(factor)
    source = names.get(id(mod.source)) if mod.source is not None else None
    record = FrozenResize(name, "SafeSubsample", mod.mode, "", factor, mod.rounding, source, sizes, r=mod.r,
                          shift=mod.shift, sigma=float(mod.sigma.detach()), anchor=mod.anchor)
    if slices_as_strided(mod, sizes[0] if sizes else ()):
        new: nn.Module = StridedSubsample(step, mod.rounding)
        record.form = "strided"
    elif dynamic or sizes is None:
        new = ScaleResize(factor, mod.mode, mod.rounding, mod.antialias, margin=mod.margin, offset=mod.offset)
        record.form = "scale"
    else:
        new = FixedResize(sizes[0], sizes[1], mod.mode, (factor, factor), mod.antialias, offset=mod.offset)
        record.form = "fixed"
    report.resizes.append(record)
    return new


def slices_as_strided(mod: SafeSubsample, sizes: Iterable[int] = ()) -> bool:
    """Whether ``freeze`` makes ``mod`` the strided slice ``x[..., ::step, ::step]``: ``nearest`` mode picking
    exactly those pixels at every input size up to 1024 (a slice takes any size) and at ``sizes``."""
    return mod.mode == "nearest" and _slices_at(mod.factor, mod.rounding, mod.margin, mod.offset, tuple(sizes))


def folds_into_conv(mod: SafeSubsample, sizes: tuple | None, layer: NJetConv2d) -> bool:
    """Whether ``freeze`` at these recorded sizes (the fixed-size form) and ``fold_stride`` compute ``mod`` and the
    N-Jet ``layer`` before it as convs of the kept pixels only (:mod:`njet_convert.export.stride_fold`): a strided
    slice, or a ``nearest`` resize whose kept rows and columns are few arithmetic runs (a factor σ has moved a
    little off an integer; an anchored point's margin that keeps one pixel fewer than the slice). This is
    what :func:`njet_convert.training.resolution.multiply_adds` counts."""
    if round(mod.factor) >= 2 and mod.rounding == "ceil" and slices_as_strided(mod, sizes[0] if sizes else ()):
        return True
    if sizes is None or mod.mode != "nearest" or tuple(sizes[0]) == tuple(sizes[1]) or any(layer.crop):
        return False  # a cropping layer's frozen conv does not keep the size the resize was recorded at
    return kept_pixel_plan(mod, layer, (int(sizes[0][0]), int(sizes[0][1]))) is not None


def kept_pixel_plan(mod: SafeSubsample, layer: NJetConv2d, size: tuple[int, int]) -> list[list[Piece]] | None:
    """The strided pieces in which ``layer`` (uncropped, 'same' padding) computes, on a ``size`` input, the pixels
    ``mod`` keeps — in training (the fused producer) and in the export
    (:class:`~njet_convert.export.stride_fold.SampledConv`) alike; None where they gather instead."""
    rows, cols = mod.sample_grid(size)
    pad = (layer.dilation[0] * layer.radius, layer.dilation[1] * layer.radius)
    return sampling_plan(size, (layer.kernel_size, layer.kernel_size), rows, cols, pad, layer.dilation)


@functools.lru_cache(maxsize=4096)  # ~60 ms a factor, asked again for every move of a resolution search
def _slices_at(factor: float, rounding: str, margin: float, offset: float, sizes: tuple[int, ...]) -> bool:
    check_sizes = [*range(1, _DYNAMIC_CHECK + 1), *sizes]
    return _strided_exact(factor, round(factor), rounding, check_sizes, margin, offset)


def _strided_exact(factor: float, step: int, rounding: str, sizes: Iterable[int], margin: float = 0.0,
                   offset: float = 1e-6) -> bool:
    """Whether SafeSubsample at ``factor`` picks exactly the pixels ``x[::step]`` (and as many) at these sizes.

    A float32 σ makes ``2 ** (σ / r)`` miss the intended integer by ~1e-7, and njet_layers' nearest grid
    ``floor(i * factor + 1e-6)`` then drifts off the strided grid on large maps: only an exact match is sliced.
    """
    if step < 1 or abs(factor - step) > 1e-4:
        return False
    for size in sizes:
        count = _out_size(int(size), factor, rounding, margin)
        if count != _out_size(int(size), float(step), rounding):
            return False
        if not torch.equal(_nearest_index(count, factor, int(size), "cpu", offset), torch.arange(count) * step):  # type: ignore[arg-type]
            return False
    return True


def _freeze_match(name: str, mod: MatchSize, sizes: tuple | None, dynamic: bool, report: FreezeReport) -> nn.Module:
    record = FrozenResize(name, "MatchSize", mod.mode, "", sizes=sizes)
    if dynamic or sizes is None:
        new: nn.Module = ResizeTo(mod.mode, mod.antialias)
        record.form = "resize_to"
    else:
        new, record.form = FixedResize(sizes[0], sizes[1], mod.mode, None, mod.antialias), "fixed"
    report.resizes.append(record)
    return new


def max_relative_error(out: Any, ref: Any) -> float:
    """``max |out - ref| / max |ref|`` over all tensors of two (nested) outputs."""
    outs, refs = _leaves(out), _leaves(ref)
    if len(outs) != len(refs):
        raise ValueError(f"outputs differ in structure: {len(outs)} tensors vs {len(refs)}")
    pairs = zip(outs, refs, strict=True)
    err = max((float((a.detach().double() - b.detach().double()).abs().max()) for a, b in pairs), default=0.0)
    scale = max((float(b.detach().double().abs().max()) for b in refs), default=0.0)
    return err / max(scale, 1e-30)


def _leaves(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _leaves(v)]
    return []


def _check_match(ref: Any, frozen: nn.Module, x: Tensor, model: nn.Module) -> tuple[float, float]:
    """``(error, tolerance)``: the frozen model's max relative error against the N-Jet model on ``x``, within
    ``FREEZE_RTOL`` or, where the N-Jet model's own float32 result is less precise than that (large α that cancel,
    deep nets), within ``NOISE_FACTOR`` times its distance from its float64 result; ``ValueError`` beyond."""
    err = max_relative_error(frozen(x), ref)
    if err <= FREEZE_RTOL:
        return err, FREEZE_RTOL
    noise = _float32_noise(model, x, ref)
    tolerance = max(FREEZE_RTOL, NOISE_FACTOR * noise)
    if not err <= tolerance:
        raise ValueError(f"frozen model differs from the N-Jet model: max relative error {err:.3g} > {tolerance:.3g} "
                         f"(the N-Jet model's own float32 rounding on this input is {noise:.3g})")
    return err, tolerance


def _float32_noise(model: nn.Module, x: Tensor, ref: Any) -> float:
    """How far the N-Jet model's output ``ref`` (in its own dtype) lies from the same model run in float64."""
    if not x.is_floating_point() or x.dtype == torch.float64:
        return 0.0
    exact = copy.deepcopy(model).eval().double()
    return max_relative_error(ref, exact(x.double()))
