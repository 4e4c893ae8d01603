"""A learned, bounded scale σ: learned through log σ so it stays positive, clamped so it stays in bounds.

The clamp passes gradients that point back into the interval, so a σ pushed onto a bound by a large step can
still leave it again (a plain clamp would freeze it there for good).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

__all__ = ["DEFAULT_SIGMA_BOUNDS", "bounded_sigma", "check_sigma_bounds", "positive_scalar"]

DEFAULT_SIGMA_BOUNDS: tuple[float, float] = (0.25, 8.0)


class _ClampInward(torch.autograd.Function):
    """Clamp whose backward lets through gradients that move the value back inside ``[lo, hi]``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        # Gradient descent moves x by -grad: above hi only a positive grad moves it down, below lo a negative one.
        blocked = ((x > ctx.hi) & (grad < 0)) | ((x < ctx.lo) & (grad > 0))
        return grad.masked_fill(blocked, 0.0), None, None


def bounded_sigma(log_sigma: Tensor, bounds: tuple[float, float]) -> Tensor:
    """σ = exp(log σ) clamped to ``bounds``; always inside the bounds whatever the raw parameter holds."""
    lo, hi = bounds
    return _ClampInward.apply(log_sigma, math.log(lo), math.log(hi)).exp()  # type: ignore[no-any-return,no-untyped-call]


def check_sigma_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    """Validate a ``(min, max)`` pair of σ bounds and return it as floats."""
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"sigma_bounds must be a pair (min, max), got {bounds!r}") from None
    if not (lo > 0 and math.isfinite(hi) and lo < hi):
        raise ValueError(f"sigma_bounds must satisfy 0 < min < max, got {bounds!r}")
    return lo, hi


def positive_scalar(name: str, value: object) -> float:
    """``value`` as a positive finite float: a real number or a one-element tensor; ValueError for anything else.

    Strings, booleans and multi-element tensors are refused in one line instead of failing later in a comparison
    (``'1.0' > 0`` is a TypeError, a two-element tensor in a condition a RuntimeError).
    """
    if torch.is_tensor(value):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} must be one positive number, got a tensor of shape {tuple(value.shape)}")
        value = float(value.detach().reshape(()))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive finite number, got {type(value).__name__} {value!r}")
    if not value > 0 or not math.isfinite(value):  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)
