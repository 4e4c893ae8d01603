"""Candidate scales σ for fitting a kernel of a given size in the N-Jet basis."""

from __future__ import annotations

import math

from njet_layers import filter_radius

__all__ = ["DEFAULT_SIGMA_RANGE", "EDGE_FRACTION", "default_sigma_grid", "sigmas_per_size"]

DEFAULT_SIGMA_RANGE: tuple[float, float] = (0.25, 8.0)  # NJetConv2d's default σ bounds

# The largest σ the plain fit tries for a filter size, as a fraction of the way across it: σ ∈ (R - 1, R] / k gives
# radius R, and a σ fitted on the edge R / k makes the filter one ring larger at the first upward step of
# fine-tuning, its compute jumping although the kernel barely changed (docs/design.md, "Fitted inside the support
# edge"). The calibration's candidates still reach the edge: there the data measured it better.
EDGE_FRACTION = 0.95
# Relative σ values tried inside each filter size.
_FRACTIONS = (0.55, 0.7, 0.85, EDGE_FRACTION)


def sigmas_per_size(radius: int, k: float) -> list[float]:
    """A few σ whose filter radius ``ceil(k * sigma)`` is exactly ``radius`` (within the default σ range)."""
    lo = (radius - 1) / k
    out = []
    for f in _FRACTIONS:
        sigma = lo + f * (radius / k - lo)
        sigma = min(max(sigma, DEFAULT_SIGMA_RANGE[0]), DEFAULT_SIGMA_RANGE[1])
        if filter_radius(sigma, k) == radius and sigma not in out:
            out.append(round(sigma, 6))
    return out


def default_sigma_grid(kernel_radius: int, k: float) -> list[float]:
    """σ values whose filters are as large as the kernel (radius ``R``) or one pixel larger (``R + 1``).

    Smaller filters cannot hold the kernel; larger ones spill further outside it and only fit worse in practice.
    """
    radius = max(1, kernel_radius)
    grid = sigmas_per_size(radius, k) + sigmas_per_size(radius + 1, k)
    if not grid:  # k so large that even the smallest σ gives a bigger filter
        grid = [DEFAULT_SIGMA_RANGE[0]]
    return sorted(set(s for s in grid if math.isfinite(s)))
