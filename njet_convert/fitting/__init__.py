"""Fitting pretrained conv kernels in the N-Jet basis: plain least squares and data-aware calibration."""

from .calibration import CalibrationOptions, calibrate
from .kernel_fit import KernelFit
from .least_squares import fit_kernels
from .placement import embed_kernel, kernel_radius

__all__ = ["CalibrationOptions", "KernelFit", "calibrate", "embed_kernel", "fit_kernels", "kernel_radius"]
