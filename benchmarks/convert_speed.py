"""Time ``njet_convert.convert`` without calibration (random init, timm models) and split it into surgery and fit.

    python benchmarks/convert_speed.py [--models resnet50 resnet18 mobilenetv2_100] [--repeat 3]

Columns: seconds for the full conversion (best of ``--repeat``), for the surgery alone (``fit=False``: deep copy,
fx trace, swaps, subsampling placement) and their difference (the kernel fits).
"""

from __future__ import annotations

import argparse
import time

import torch

import njet_convert

__all__ = ["main", "time_convert"]


def time_convert(model: torch.nn.Module, repeat: int, **kwargs) -> float:
    """Best wall-clock seconds of ``repeat`` conversions."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        njet_convert.convert(model, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


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
    print("| model | convert (s) | surgery only (s) | fits (s) |")
    print("|---|---|---|---|")
    for name in args.models:
        model = timm.create_model(name, pretrained=False).eval()
        full = time_convert(model, args.repeat)
        surgery = time_convert(model, args.repeat, fit=False)
        print(f"| {name} | {full:.2f} | {surgery:.2f} | {full - surgery:.2f} |", flush=True)


if __name__ == "__main__":
    main()
