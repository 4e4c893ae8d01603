"""Frozen replacements for :class:`~njet_layers.SafeSubsample` and :class:`~njet_layers.MatchSize`.

Each module reproduces the N-Jet module's output exactly (same sizes, same sampled pixels, same interpolation)
with a fixed factor instead of a learned σ, in a form that ONNX expresses with standard ops:

- :class:`StridedSubsample`: nearest sampling with an integer factor is ``x[..., ::f, ::f]`` (a ``Slice``), for any
  input size; a crop follows for ``floor``/``round`` rounding.
- :class:`FixedResize`: the *fixed-size* form, recorded on an example input: constant output size (``Gather`` with
  constant indices, ``Resize`` to a constant size, ``AveragePool`` or two constant ``MatMul`` for ``area``).
- :class:`ScaleResize`: the *scale-factor* form for dynamic spatial export: the output size is computed from the
  input's shape at run time (``Shape`` → ``Div`` → ``Ceil``…), so any input size works.
- :class:`ResizeTo`: a join that resizes ``x`` to ``reference``'s size at run time (the frozen ``MatchSize``).

Sizes come from ``x.shape``: plain ints in eager mode, traced 0-d tensors under ``torch.jit`` tracing (the
TorchScript ONNX exporter), so the same code runs eagerly and exports with symbolic shapes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from njet_layers.safe_subsample import safe_output_size

__all__ = ["FixedResize", "ResizeTo", "ScaleResize", "StridedSubsample"]

Mode = Literal["nearest", "bilinear", "bicubic", "area"]
_EPS = 1e-6  # the same guard njet_layers uses for floor(i * factor)


def _out_size(size: int | Tensor, factor: float, rounding: str, margin: float = 0.0) -> int | Tensor:
    """``rounding(size / factor)`` with njet_layers' ``margin``, at least 1: Python ints eagerly, tensor ops when
    ``size`` is traced."""
    if not isinstance(size, Tensor):
        return safe_output_size(int(size), factor, rounding, margin)  # type: ignore[arg-type]
    value = size.to(torch.float64) / factor
    margin = max(margin, _EPS)
    if rounding == "ceil":
        out = torch.ceil(value - margin)
    elif rounding == "floor":
        out = torch.floor(value + margin)
    else:
        out = torch.round(value)  # half to even, like Python's round() and ONNX Round
    return torch.clamp(out, min=1.0).to(torch.int64)


def _nearest_index(count: int | Tensor, factor: float | Tensor, limit: int | Tensor, device: torch.device,
                   offset: float = _EPS) -> Tensor:
    """Pixels ``floor(i * factor + offset)`` for ``i < count``, clipped to ``limit - 1`` (njet_layers' nearest
    grid; ``offset`` 0.5 for an anchored SafeSubsample)."""
    idx = torch.floor(torch.arange(count, dtype=torch.float64, device=device) * factor + offset).to(torch.int64)
    return torch.minimum(idx, torch.as_tensor(limit, device=device) - 1)


def _nearest(x: Tensor, size: tuple, factor: tuple, offset: float = _EPS) -> Tensor:
    rows = _nearest_index(size[0], factor[0], x.shape[-2], x.device, offset)
    cols = _nearest_index(size[1], factor[1], x.shape[-1], x.device, offset)
    return x.index_select(-2, rows).index_select(-1, cols)


def _interpolate(x: Tensor, size: tuple, mode: str, antialias: bool) -> Tensor:
    if isinstance(size[0], Tensor) or isinstance(size[1], Tensor):
        size = tuple(torch.as_tensor(s) for s in size)  # keep traced sizes symbolic
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


class StridedSubsample(nn.Module):
    """``x[..., ::step, ::step]``: nearest subsampling by an integer factor (= a strided conv's sampling grid).

    ``rounding="ceil"`` is exactly the slice for every input size; ``floor``/``round`` crop the slice to
    ``rounding(size / step)`` pixels (never below 1), as :class:`~njet_layers.SafeSubsample` does.
    """

    def __init__(self, step: int, rounding: str = "ceil") -> None:
        super().__init__()
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"step must be a positive integer, got {step!r}")
        self.step, self.rounding = step, rounding

    def forward(self, x: Tensor) -> Tensor:
        if self.step == 1:
            return x
        y = x[..., :: self.step, :: self.step]
        if self.rounding == "ceil":
            return y
        oh = _out_size(x.shape[-2], float(self.step), self.rounding)
        ow = _out_size(x.shape[-1], float(self.step), self.rounding)
        return y[..., :oh, :ow]

    def extra_repr(self) -> str:
        return f"step={self.step}, rounding={self.rounding!r}"


class FixedResize(nn.Module):
    """Resize from one recorded spatial size to another (the fixed-size form); ``reference`` is ignored.

    ``nearest`` keeps the pixels ``floor(i * factor)`` through constant index buffers; ``bilinear``/``bicubic``
    interpolate to the constant size; ``area`` averages (``AveragePool`` when the sizes divide, else two constant
    averaging matrices). Eagerly, an input of another size is an error: freeze with ``dynamic_spatial=True``.
    """

    def __init__(
        self,
        in_size: tuple[int, int],
        out_size: tuple[int, int],
        mode: Mode = "nearest",
        factor: tuple[float, float] | None = None,
        antialias: bool = False,
        offset: float = _EPS,
    ) -> None:
        super().__init__()
        self.in_size, self.out_size = tuple(int(s) for s in in_size), tuple(int(s) for s in out_size)
        self.mode, self.antialias = mode, antialias
        if factor is None:
            factor = (in_size[0] / out_size[0], in_size[1] / out_size[1])
        self.factor = tuple(float(f) for f in factor)
        self.identity = self.in_size == self.out_size
        if mode == "nearest" and not self.identity:
            for name, axis in (("rows", 0), ("cols", 1)):
                index = _nearest_index(self.out_size[axis], self.factor[axis], self.in_size[axis], "cpu", offset)
                self.register_buffer(name, index)
        self.pool = mode == "area" and all(i % o == 0 for i, o in zip(self.in_size, self.out_size, strict=True))
        if mode == "area" and not self.pool and not self.identity:
            self.register_buffer("avg_h", _area_matrix(self.in_size[0], self.out_size[0]))
            self.register_buffer("avg_w", _area_matrix(self.in_size[1], self.out_size[1]))

    def forward(self, x: Tensor, reference: Tensor | None = None) -> Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != self.in_size:
            raise ValueError(
                f"FixedResize was frozen for input size {self.in_size}, got {tuple(x.shape[-2:])}: "
                "freeze with dynamic_spatial=True for other sizes"
            )
        if self.identity:
            return x
        if self.mode == "nearest":
            return x.index_select(-2, self.rows).index_select(-1, self.cols)
        if self.mode == "area":
            if self.pool:
                kernel = tuple(i // o for i, o in zip(self.in_size, self.out_size, strict=True))
                return F.avg_pool2d(x, kernel, kernel)
            return torch.matmul(torch.matmul(self.avg_h.to(x.dtype), x), self.avg_w.to(x.dtype).t())
        return _interpolate(x, self.out_size, self.mode, self.antialias)

    def extra_repr(self) -> str:
        return f"{self.in_size} -> {self.out_size}, mode={self.mode!r}"


def _area_matrix(size_in: int, size_out: int) -> Tensor:
    """``[out, in]`` rows averaging the bins of ``adaptive_avg_pool``: ``[floor(o*in/out), ceil((o+1)*in/out))``."""
    mat = torch.zeros(size_out, size_in)
    for o in range(size_out):
        lo, hi = (o * size_in) // size_out, -((-(o + 1) * size_in) // size_out)
        mat[o, lo:hi] = 1.0 / (hi - lo)
    return mat


class ScaleResize(nn.Module):
    """Subsample by a fixed ``factor`` with the output size computed from the input at run time (dynamic shapes).

    Same sizes (``rounding(size / factor)``, ≥ 1, with the module's ``margin``) and pixels (grid ``offset``) as
    :class:`~njet_layers.SafeSubsample` at that factor, for every input size. ``area`` works eagerly but ONNX has no
    adaptive pooling for arbitrary sizes.
    """

    def __init__(self, factor: float, mode: Mode = "nearest", rounding: str = "ceil", antialias: bool = False,
                 margin: float = 0.0, offset: float = _EPS) -> None:
        super().__init__()
        if not factor > 0:
            raise ValueError(f"factor must be positive, got {factor!r}")
        self.factor, self.mode, self.rounding, self.antialias = float(factor), mode, rounding, antialias
        self.margin, self.offset = float(margin), float(offset)

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(_out_size(s, self.factor, self.rounding, self.margin) for s in x.shape[-2:])
        if not torch.jit.is_tracing() and tuple(size) == tuple(x.shape[-2:]):
            return x
        if self.mode == "nearest":
            return _nearest(x, size, (self.factor, self.factor), self.offset)
        if self.mode == "area":
            return F.adaptive_avg_pool2d(x, size)
        return _interpolate(x, size, self.mode, self.antialias)

    def extra_repr(self) -> str:
        return f"factor={self.factor:.6g}, mode={self.mode!r}, rounding={self.rounding!r}"


class ResizeTo(nn.Module):
    """Resize ``x`` to ``reference``'s spatial size at run time: the frozen :class:`~njet_layers.MatchSize`."""

    def __init__(self, mode: Mode = "nearest", antialias: bool = False) -> None:
        super().__init__()
        self.mode, self.antialias = mode, antialias

    def forward(self, x: Tensor, reference: Tensor) -> Tensor:
        size = (reference.shape[-2], reference.shape[-1])
        if not torch.jit.is_tracing() and tuple(size) == tuple(x.shape[-2:]):
            return x
        if self.mode == "nearest":
            factor = tuple(_ratio(a, b) for a, b in zip(x.shape[-2:], size, strict=True))
            return _nearest(x, size, factor)
        if self.mode == "area":
            return F.adaptive_avg_pool2d(x, size)
        return _interpolate(x, size, self.mode, self.antialias)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def _ratio(a: int | Tensor, b: int | Tensor) -> float | Tensor:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.as_tensor(a).to(torch.float64) / torch.as_tensor(b).to(torch.float64)
    return a / b
