"""Strided max/avg pools (modules and ``F.max_pool2d`` / ``F.avg_pool2d`` calls) as stride-1 pools.

A stride-1 pool followed by a SafeSubsample whose factor equals the stride samples exactly the original's windows
(``nearest`` picks positions ``i * stride``). ``ceil_mode`` max pools get ``stride - 1`` pixels of ``-inf`` padding
after the map so their last, partial window exists at stride 1 too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .convs import conv_output_size

__all__ = ["POOL_FUNCTIONS", "PoolPlan", "plan_pool_call", "plan_pool_module", "stride1_pool"]

POOL_FUNCTIONS = {F.max_pool2d: "max", torch.max_pool2d: "max", F.avg_pool2d: "avg", torch._C._nn.avg_pool2d: "avg"}
_MAX_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


@dataclass
class PoolPlan:
    kind: str  # "max" or "avg"
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None
    reason: str = ""

    def out_size(self, n: int, axis: int) -> int:
        return conv_output_size(n, self.kernel_size[axis], self.stride[axis], self.padding[axis],
                                self.dilation[axis], self.ceil_mode)

    def extra_pad(self) -> int:
        return self.stride[0] - 1 if self.ceil_mode else 0

    def stride1_size(self, n: int, axis: int) -> int:
        return conv_output_size(n + self.extra_pad(), self.kernel_size[axis], 1, self.padding[axis],
                                self.dilation[axis])


def plan_pool_module(pool: nn.Module) -> PoolPlan | None:
    """Plan for an ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (exact types); None for other modules."""
    if type(pool) is nn.MaxPool2d:
        plan = PoolPlan("max", _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding), _pair(pool.dilation),
                        bool(pool.ceil_mode))
        if pool.return_indices:
            plan.reason = "return_indices=True"
        return plan
    if type(pool) is nn.AvgPool2d:
        return _check_avg(PoolPlan("avg", _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding),
                                   ceil_mode=bool(pool.ceil_mode), count_include_pad=bool(pool.count_include_pad),
                                   divisor_override=pool.divisor_override))
    return None


def plan_pool_call(node) -> PoolPlan | str:
    """Plan for a functional pool call node, or the reason it cannot be planned (non-constant arguments)."""
    kind = POOL_FUNCTIONS[node.target]
    names = _MAX_ARGS if kind == "max" else _AVG_ARGS
    bound = dict(zip(names, node.args, strict=False))
    bound.update(node.kwargs)
    consts = {k: v for k, v in bound.items() if k != "input"}
    if any(isinstance(v, torch.fx.Node) for v in _flat(consts.values())):
        return "non-constant pooling arguments"
    kernel = _pair(consts["kernel_size"])
    stride = _pair(consts.get("stride") or kernel)
    padding = _pair(consts.get("padding", 0))
    if kind == "max":
        if consts.get("return_indices"):
            return "return_indices=True"
        return PoolPlan("max", kernel, stride, padding, _pair(consts.get("dilation", 1)),
                        bool(consts.get("ceil_mode", False)))
    return _check_avg(PoolPlan("avg", kernel, stride, padding, ceil_mode=bool(consts.get("ceil_mode", False)),
                               count_include_pad=bool(consts.get("count_include_pad", True)),
                               divisor_override=consts.get("divisor_override")))


def _check_avg(plan: PoolPlan) -> PoolPlan:
    if plan.ceil_mode and (plan.padding != (0, 0) or plan.divisor_override):
        plan.reason = "ceil_mode avg pool with padding or divisor_override: border windows are not reproduced"
    return plan


def _flat(values):
    for v in values:
        if isinstance(v, list | tuple):
            yield from _flat(v)
        else:
            yield v


class _CeilAvgPool(nn.Module):
    """Stride-1 average pool (no padding) that also has a ceil-mode pool's partial last windows: the sum over the
    pixels inside the map divided by their count (what ``ceil_mode=True`` does for the overhanging windows)."""

    def __init__(self, kernel_size: tuple[int, int], amount: int) -> None:
        super().__init__()
        self.kernel_size, self.amount = kernel_size, amount

    def forward(self, x):
        pad = (0, self.amount, 0, self.amount)
        total = F.avg_pool2d(F.pad(x, pad), self.kernel_size, 1)
        count = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), pad), self.kernel_size, 1)
        return total / count


class _CeilPad(nn.Module):
    """``-inf`` padding after the map (right and bottom) so a stride-1 max pool has a ceil-mode pool's last window."""

    def __init__(self, amount: int) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, x):
        return F.pad(x, (0, self.amount, 0, self.amount), value=-float("inf"))


def stride1_pool(plan: PoolPlan) -> nn.Module:
    """The pool at stride 1 (same kernel, padding, dilation), with ceil-mode padding when needed."""
    if plan.kind == "avg" and plan.extra_pad():
        return _CeilAvgPool(plan.kernel_size, plan.extra_pad())
    if plan.kind == "max":
        pool: nn.Module = nn.MaxPool2d(plan.kernel_size, 1, plan.padding, plan.dilation)
    else:
        pool = nn.AvgPool2d(plan.kernel_size, 1, plan.padding, count_include_pad=plan.count_include_pad,
                            divisor_override=plan.divisor_override)
    if plan.extra_pad():
        return nn.Sequential(_CeilPad(plan.extra_pad()), pool)
    return pool


