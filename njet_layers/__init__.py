"""njet_layers: the N-Jet layer library (Pintea et al., "Resolution learning in deep convolutional networks
using scale-space theory", IEEE TIP 2021). Depends on torch only."""

from .autotune import autotuning, set_autotune
from .axis_filters import anchored_mix, axis_filters, orthonormal_mix, remix_alpha
from .basis import (
    BasisOrder,
    axis_orders,
    basis_orders,
    basis_size,
    compose_basis,
    describe_basis,
    filter_radius,
    gaussian_basis,
    gaussian_derivatives_1d,
    is_tensor_basis,
)
from .basis_first import basis_first_conv2d
from .fft_conv import fft_conv2d
from .njet_conv import NJetConv2d
from .safe_subsample import MatchSize, SafeSubsample, safe_output_size
from .scale import DEFAULT_SIGMA_BOUNDS, bounded_sigma

__all__ = [
    "DEFAULT_SIGMA_BOUNDS",
    "BasisOrder",
    "MatchSize",
    "NJetConv2d",
    "SafeSubsample",
    "anchored_mix",
    "autotuning",
    "axis_filters",
    "axis_orders",
    "basis_first_conv2d",
    "basis_orders",
    "basis_size",
    "bounded_sigma",
    "compose_basis",
    "describe_basis",
    "fft_conv2d",
    "filter_radius",
    "gaussian_basis",
    "gaussian_derivatives_1d",
    "is_tensor_basis",
    "orthonormal_mix",
    "remix_alpha",
    "safe_output_size",
    "set_autotune",
]
