"""Fitting pretrained conv kernels in the N-Jet basis: exact and plain least-squares fits, data-aware calibration."""

from .calibration import CalibrationOptions, calibrate
from .exact_fit import exact_sigma, fit_exact
from .fill import fit_converted, fit_layer
from .kernel_fit import KernelFit
from .least_squares import fit_kernels
from .placement import embed_kernel, kernel_radius

__all__ = ["CalibrationOptions", "KernelFit", "calibrate", "embed_kernel", "exact_sigma", "fit_converted", "fit_exact",
           "fit_kernels", "fit_layer", "kernel_radius"]
