"""The result of fitting one layer's kernels in the N-Jet basis."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["KernelFit"]


@dataclass
class KernelFit:
    """Basis weights, scale and error of one layer's fit.

    Attributes:
        alpha: ``[out, in / groups, M]`` float32 basis weights (the ``alpha`` of an ``NJetConv2d``).
        sigma: the scale σ the weights belong to (it also sets the filter size ``2 * ceil(k * sigma) + 1``).
        error: relative L2 error of the fitted kernels vs the originals; after calibration, the relative error of
            the layer's output on the calibration data (data-weighted).
    """

    alpha: Tensor
    sigma: float
    error: float
