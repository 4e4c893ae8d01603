"""Throughput of the separable path's combine shapes: a BLAS matrix product (``torch.mm``) against the same product
run as a 1×1 convolution by the convolution library (oneDNN on CPU, cuDNN on CUDA), forward and both gradients.

Why: :mod:`njet_layers.separable` does its combine as 1×1 convolutions because on the project's CPU (AMD EPYC,
where the BLAS library's fastest kernels are not used) the convolution library runs these shapes 1.3–1.7× faster
(forward + both gradients; the forward alone up to 2.6×).
This script is how that was measured and how to check it on another machine; each row is timed in interleaved
rounds (median), pixels = batch · map² of a 64-channel layer at 32², batch 32 by default.

    python benchmarks/combine_throughput.py --threads 2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from layer_speed import time_interleaved
from torch import Tensor

__all__ = ["main"]

SHAPES = ((640, 64), (256, 64), (256, 256), (192, 192), (64, 256))  # (K inputs, M outputs) per pixel


def _steps(x: Tensor, g: Tensor, w: Tensor) -> dict[str, Callable[[], object]]:
    """The three products of one combine, each as ``torch.mm`` and as the convolution library's op."""
    k = x.shape[1]
    x2, g2, w2 = x.permute(0, 2, 3, 1).reshape(-1, k), g.permute(0, 2, 3, 1).reshape(-1, w.shape[0]), w.flatten(1)
    wt = w.transpose(0, 1).contiguous()
    mask = (False, True, False)
    return {
        "forward mm": lambda: torch.mm(x2, w2.t()),
        "forward conv": lambda: F.conv2d(x, w),
        "input grad mm": lambda: torch.mm(g2, w2),
        "input grad conv": lambda: F.conv2d(g, wt),
        "weight grad mm": lambda: torch.mm(g2.t(), x2),
        "weight grad conv": lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, (1, 1), (0, 0), (1, 1), False, (0, 0), 1, mask),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32, help="map side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"pixels={args.batch * args.size ** 2}\n")
    print("| K → M | forward mm / conv ms | input grad mm / conv ms | weight grad mm / conv ms | mm ÷ conv, all |")
    print("|---|---|---|---|---|")
    for k, m in SHAPES:
        cl = torch.channels_last
        x = torch.randn(args.batch, k, args.size, args.size, device=device).contiguous(memory_format=cl)
        g = torch.randn(args.batch, m, args.size, args.size, device=device).contiguous(memory_format=cl)
        w = torch.randn(m, k, 1, 1, device=device)
        ms = {name: 1e3 * sec for name, sec in time_interleaved(_steps(x, g, w), args.rounds, device).items()}
        cells = [f"{ms[f'{s} mm']:.1f} / {ms[f'{s} conv']:.1f}" for s in ("forward", "input grad", "weight grad")]
        ratio = sum(v for n, v in ms.items() if n.endswith("mm")) / sum(v for n, v in ms.items() if n.endswith("conv"))
        print(f"| {k} → {m} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
