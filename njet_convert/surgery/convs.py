"""Which convs can become NJetConv2d, and how: exact type matching, effective weights, padding as ``crop``.

Each handled type maps to a :class:`ConvPlan`: the effective weight to fit (the standardised one for timm's
weight-standardised convs), the crop that reproduces the original padding at a σ-independent size, whether timm's
dynamic TF-'SAME' padding must be reproduced by a :class:`~.modules.PadSame` in front, and the original output size
as a function of the input size (so the subsampling rounding can be chosen to match it exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvPlan", "conv_output_size", "kernel_radius", "plan_conv"]


@dataclass
class ConvPlan:
    """How one conv is converted (``reason`` set: it is skipped, with that reason)."""

    weight: Callable[[], Tensor] | None = None
    crop: tuple[int, int] = (0, 0)
    pad_same: bool = False
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    kernel_size: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    standardised: bool = False  # the fit used the weight-standardised kernel (fixed from then on)
    reason: str = ""

    @property
    def frame_radius(self) -> int:
        """Radius of the smallest square N-Jet filter frame that holds the (dilated) kernel."""
        return kernel_radius(self.kernel_size, self.dilation)

    def out_size(self, n: int, axis: int) -> int:
        """The original conv's output size along ``axis`` for input size ``n``."""
        if self.pad_same:
            return math.ceil(n / self.stride[axis])
        return conv_output_size(n, self.kernel_size[axis], self.stride[axis], self.padding[axis], self.dilation[axis])

    def stride1_size(self, n: int, axis: int) -> int:
        """Size after the stride-1 replacement (PadSame + N-Jet conv with ``crop``), before subsampling."""
        if self.pad_same:
            from .modules import same_padding

            k, s, d = self.kernel_size[axis], self.stride[axis], self.dilation[axis]
            return n + same_padding(n, k, s, d) - 2 * self.crop[axis]
        return n - 2 * self.crop[axis]


def kernel_radius(kernel_size: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> int:
    """Smallest radius ``R`` of a square ``(2R + 1)``-frame that holds the (dilated) kernel, placed with
    ``(k - 1) // 2`` taps before the centre (even kernels put the extra tap after it)."""
    radii = []
    for size, dil in zip(kernel_size, dilation, strict=True):
        before = (size - 1) // 2
        radii.append(dil * max(before, size - 1 - before))
    return max(radii)


def conv_output_size(n: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool = False) -> int:
    """PyTorch's conv/pool output size formula along one axis."""
    span = n + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return max(out, 0)


def _plain_weight(conv: nn.Conv2d) -> Callable[[], Tensor]:
    return lambda: conv.weight.detach()


def _standardised_weight(conv: nn.Conv2d) -> Callable[[], Tensor]:
    """timm's StdConv2d / ScaledStdConv2d weight: per-output-channel standardisation (times gain·scale)."""

    def weight() -> Tensor:
        w = conv.weight.detach()
        scale = None
        if hasattr(conv, "gain") and hasattr(conv, "scale"):
            scale = (conv.gain.detach() * conv.scale).reshape(-1)
        with torch.no_grad():
            out = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, weight=scale, training=True, momentum=0.0,
                               eps=conv.eps)
        return out.reshape_as(w)

    return weight


def _timm_types() -> dict[str, tuple[type, ...]]:
    """timm's Conv2d subclasses with their own forward, by what that forward does (all of timm 1.0's)."""
    try:
        from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
    except ImportError:
        return {}
    types: dict[str, tuple[type, ...]] = {"same": (Conv2dSame,), "std": (StdConv2d, ScaledStdConv2d),
                                          "std_same": (StdConv2dSame, ScaledStdConv2dSame)}
    try:
        from timm.layers.conv2d_same import Conv2dSameExport  # pads TF-'SAME' once per input size: same result
    except ImportError:
        pass
    else:
        types["same"] += (Conv2dSameExport,)
    return types


def plan_conv(conv: nn.Module) -> ConvPlan:
    """The :class:`ConvPlan` of ``conv`` matched by its exact type; unknown Conv2d subclasses are skipped."""
    timm = _timm_types()
    kind = type(conv)
    if kind is nn.Conv2d:
        weight, same = _plain_weight(conv), False
    elif kind in timm.get("same", ()):
        weight, same = _plain_weight(conv), True
    elif kind in timm.get("std", ()):
        weight, same = _standardised_weight(conv), False
    elif kind in timm.get("std_same", ()):
        weight, same = _standardised_weight(conv), bool(getattr(conv, "same_pad", True))
    else:
        return ConvPlan(reason=f"unsupported conv type {kind.__module__}.{kind.__qualname__} (own forward)")
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        return ConvPlan(reason=f"padding_mode={conv.padding_mode!r} is not reproduced (only zero padding)")
    std = kind in timm.get("std", ()) + timm.get("std_same", ())
    plan = ConvPlan(weight=weight, pad_same=same, stride=tuple(conv.stride), dilation=tuple(conv.dilation),
                    kernel_size=tuple(conv.kernel_size), standardised=std)
    return _padding(plan, conv.padding)


def _padding(plan: ConvPlan, padding) -> ConvPlan:
    """Turn the conv's padding into ``crop`` relative to the 'same'-centred N-Jet conv (see module doc)."""
    radii = [d * (k - 1) // 2 for k, d in zip(plan.kernel_size, plan.dilation, strict=True)]
    even = [k % 2 == 0 and k > 1 for k in plan.kernel_size]
    if plan.pad_same:
        plan.crop = tuple(radii)  # the PadSame in front pads; the N-Jet conv then acts as a 'valid' conv
        if any(even):
            plan.reason = "even kernel with TF-SAME padding is not reproduced"
        return plan
    if padding == "same":
        plan.padding = tuple(r for r in radii)
        if any(s > 1 for s in plan.stride):
            plan.reason = "padding='same' with stride > 1"
        return plan  # even kernels: PyTorch's 'same' matches the fit's placement
    if padding == "valid":
        padding = (0, 0)
    plan.padding = tuple(padding)
    # the fit centres a kernel with (k - 1) // 2 taps before the centre: crop aligns the N-Jet conv's output grid
    crop = tuple(d * ((k - 1) // 2) - p for k, d, p in zip(plan.kernel_size, plan.dilation, plan.padding, strict=True))
    if min(crop) < 0:
        plan.reason = f"padding {plan.padding} wider than the kernel's radius {tuple(radii)} is not reproduced"
        return plan
    if any(e and s == 1 for e, s in zip(even, plan.stride, strict=True)):
        plan.reason = f"even kernel {plan.kernel_size} at stride 1 with padding {plan.padding} is not reproduced"
        return plan
    plan.crop = crop
    return plan
