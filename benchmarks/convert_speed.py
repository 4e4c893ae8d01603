"""Time ``njet_convert.convert`` without calibration (random init, timm models), split into surgery and fits, and
compare ``fitting.fit_kernels``' Gram-matrix σ search with a direct fit at every σ of the grid in one run.

    python benchmarks/convert_speed.py [--models resnet50 resnet18 mobilenetv2_100] [--repeat 3] [--threads 1]

Columns (best of ``--repeat``): wall-clock and process CPU seconds of the full conversion; the surgery alone
(``fit=False``: deep copy, fx trace, swaps, subsampling placement); the full conversion with every σ of the grid
fitted on the whole weight tensor (the reference path) and its ratio to the default.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch

import njet_convert

__all__ = ["main", "time_convert"]


def time_convert(model: torch.nn.Module, repeat: int, **kwargs) -> tuple[float, float]:
    """Best (wall-clock, CPU) seconds of ``repeat`` conversions."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        njet_convert.convert(model, **kwargs)
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def _reference_fit(weight, order, k, sigma_grid=None, dilation=(1, 1)):
    """The former σ search: a direct least-squares fit on the padded kernels at every σ of the grid."""
    from njet_convert.fitting import kernel_radius
    from njet_convert.fitting.least_squares import fit_at_sigma
    from njet_convert.fitting.sigma_search import default_sigma_grid

    grid = sigma_grid or default_sigma_grid(kernel_radius(tuple(weight.shape[-2:]), dilation), k)
    fits = [fit_at_sigma(weight, order, k, s, dilation) for s in grid]
    return min(fits, key=lambda f: f.error)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18", "mobilenetv2_100"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| model | convert wall (s) | convert CPU (s) | surgery only wall (s) | every-σ fit wall (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model = timm.create_model(name, pretrained=False).eval()
        njet_convert.convert(model, fit=False)  # warm-up (imports, first trace)
        full = time_convert(model, args.repeat)
        surgery = time_convert(model, args.repeat, fit=False)
        with mock.patch("njet_convert.surgery.transforms.fit_kernels", _reference_fit):
            reference = time_convert(model, args.repeat)
        print(f"| {name} | {full[0]:.2f} | {full[1]:.2f} | {surgery[0]:.2f} | {reference[0]:.2f} "
              f"| {reference[0] / full[0]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
