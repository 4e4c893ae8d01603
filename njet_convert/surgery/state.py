"""Shared state of one conversion: the model being rewritten, its graph, the plan and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from ..config import ConvertConfig
from ..report import ConversionReport
from .convs import ConvPlan
from .selection import Selector

__all__ = ["Point", "SurgeryState"]

SIZES = tuple(range(1, 97))  # input sizes on which the subsampling rounding must reproduce the original


@dataclass
class Point:
    """A subsampling point: a strided conv or pool that becomes stride 1 + SafeSubsample."""

    id: int
    origin: str  # module name, or node name for a functional pool
    kind: str  # "conv", "pool", "functional pool"
    stride: int
    plan: Any  # ConvPlan or PoolPlan (for the size functions)
    nodes: list[fx.Node] = field(default_factory=list)  # graph nodes it acts on (empty: module-swapped)
    njet: str | None = None  # the NJetConv2d this point belongs to (a converted strided conv)
    before: bool = False  # subsample the input (1×1 convs) rather than the output
    rounding: str = "ceil"
    exact: bool = True
    subsample: str = ""  # qualified name of the SafeSubsample placed for it
    source: str | None = None

    def key(self) -> tuple:
        """Points can only be grouped when stride, size function and rounding agree."""
        return (self.stride, self.sizes(), self.rounding)

    def sizes(self) -> tuple:
        if self.before:
            return tuple(SIZES)
        return tuple(self.plan.stride1_size(n, 0) for n in SIZES)


@dataclass
class SurgeryState:
    model: nn.Module  # the GraphModule, or the deep copy when the model could not be traced
    gm: fx.GraphModule | None
    cfg: ConvertConfig
    report: ConversionReport
    selector: Selector
    sigma_for: dict[str, float] = field(default_factory=dict)  # structure-only: σ per layer (load)
    points: list[Point] = field(default_factory=list)
    pairs: dict[str, str] = field(default_factory=dict)  # converted NJetConv2d name -> original conv name
    no_calibration: set[str] = field(default_factory=set)
    tokens: dict[fx.Node, tuple] = field(default_factory=dict)
    strides: dict[str, int] = field(default_factory=dict)  # SafeSubsample name -> original stride
    in_graph: set[str] = field(default_factory=set)
    originals: dict[str, nn.Module] = field(default_factory=dict)  # name -> original module (for calibration)
    plans: dict[str, ConvPlan] = field(default_factory=dict)  # name -> its conv's plan (the fit reads it)
    pinned: dict[str, tuple[int, int]] = field(default_factory=dict)  # flatten node -> pinned input size

    def new_point(self, **kwargs) -> Point:
        point = Point(id=len(self.points), **kwargs)
        self.points.append(point)
        return point

    def unique_name(self, base: str) -> str:
        names = {n for n, _ in self.model.named_modules()}
        name, i = base, 1
        while name in names:
            name, i = f"{base}_{i}", i + 1
        return name
