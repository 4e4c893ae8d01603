"""The shared interface of the per-layer refits: what a refit gets (:class:`RefitJob`), what it gives back
(:class:`LayerResult`), and the strategy protocol (:class:`LayerRefit`) that the pass driver picks one of per layer.

Strategies: :mod:`.exact` (N-Jet layers with a moment matrix small enough to form per conv group: depthwise and
narrow dense convs), :mod:`.blockwise` (wider dense convs, fitted in blocks of input channels), :mod:`.pointwise`
(plain 1×1 convs kept in both networks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor, nn

from ..kernel_fit import KernelFit
from .options import CalibrationOptions

__all__ = ["LayerRefit", "LayerResult", "RefitJob"]


@dataclass
class RefitJob:
    """One layer to refit: the converted layer, its original, what follows it, and its inputs on the fit data.

    ``inputs``: the layer's inputs in the (already refitted) converted network, batch by batch; ``targets``: the
    original layer's outputs at the sampled positions (pointwise refits only; the others compute their own).
    ``norm``: the batch norm directly after the layer (it can absorb a mean shift); ``subsamplers``: the
    SafeSubsample modules whose factor follows the layer's σ.
    """

    name: str
    layer: nn.Module
    original: nn.Module | None
    norm: nn.Module | None
    inputs: list[Tensor]
    options: CalibrationOptions
    targets: list[Tensor] | None = None
    subsamplers: list = field(default_factory=list)


@dataclass
class LayerResult:
    """What a refit did: its strategy, the relative output error on the fit data, the new fit (N-Jet layers), or
    why the layer kept its previous weights (``skipped``)."""

    name: str
    strategy: str
    error: float = math.nan
    fit: KernelFit | None = None
    skipped: str = ""
    detail: str = ""  # how the strategy fitted it (e.g. its blocks), for the report

    def describe(self) -> str:
        """One line for the progress display."""
        if self.skipped:
            return f"{self.strategy} refit skipped: {self.skipped}"
        sigma = f"sigma={self.fit.sigma:.3g} " if self.fit is not None else ""
        return f"{self.strategy}: {sigma}output error={self.error:.4f}"


class LayerRefit(Protocol):
    """A refit strategy: ``applies(job)`` says whether it handles the layer, ``refit(job)`` refits it in place."""

    name: str

    def applies(self, job: RefitJob) -> bool: ...

    def refit(self, job: RefitJob) -> LayerResult: ...
