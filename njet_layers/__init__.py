"""njet_layers: the N-Jet layer library (Pintea et al., "Resolution learning in deep convolutional networks
using scale-space theory", IEEE TIP 2021). Depends on torch only."""

from .basis import basis_orders, basis_size, filter_radius, gaussian_basis, gaussian_derivatives_1d
from .basis_first import basis_first_conv2d
from .fft_conv import fft_conv2d
from .njet_conv import NJetConv2d
from .safe_subsample import MatchSize, SafeSubsample, safe_output_size
from .scale import DEFAULT_SIGMA_BOUNDS, bounded_sigma

__all__ = [
    "DEFAULT_SIGMA_BOUNDS",
    "MatchSize",
    "NJetConv2d",
    "SafeSubsample",
    "basis_first_conv2d",
    "basis_orders",
    "basis_size",
    "bounded_sigma",
    "fft_conv2d",
    "filter_radius",
    "gaussian_basis",
    "gaussian_derivatives_1d",
    "safe_output_size",
]
