"""Forward + backward of a grouped (depthwise) convolution on an NCHW tensor, against the same convolution run on a
channels-last copy whose output goes back to NCHW (the copies counted) — the choice
:mod:`njet_layers.grouped_layout` makes for an N-Jet layer's dense and sampled convolutions.

Why: a converted MobileNetV2 at order 3 trains its depthwise layers as 5×5 filters once σ passes 0.5, and PyTorch's
CPU convolution of a grouped 5×5 filter runs its weight gradient several times slower in NCHW. Shapes are
MobileNetV2's depthwise layers at 128 px, batch 16 (what ``benchmarks/step_cost.py`` trains), stride 1; the last
column is what ``NJetConv2d`` does (the preferred layout: channels-last for grouped filters larger than 3×3 up to
``MAX_CHANNELS_LAST_TAPS`` channel × tap weights) against the plain NCHW call.

    python benchmarks/grouped_layout.py --threads 2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from layer_speed import time_interleaved

from njet_layers.grouped_layout import in_preferred_layout

__all__ = ["main"]

SHAPES = ((16, 32, 64), (16, 144, 32), (16, 192, 16), (16, 576, 8), (16, 960, 4))  # (batch, channels, map size)


def _step(x: torch.Tensor, w: torch.Tensor, channels_last: bool) -> Callable[[], object]:
    groups, pad = x.shape[1], w.shape[-1] // 2

    def conv(inp: torch.Tensor) -> torch.Tensor:
        return F.conv2d(inp, w, None, 1, pad, 1, groups)

    def step() -> None:
        out = conv(x.contiguous(memory_format=torch.channels_last)).contiguous() if channels_last else conv(x)
        out.backward(torch.ones_like(out))

    return step


def _preferred(x: torch.Tensor, w: torch.Tensor) -> Callable[[], object]:
    groups, pad = x.shape[1], w.shape[-1] // 2

    def step() -> None:
        out = in_preferred_layout(lambda inp: F.conv2d(inp, w, None, 1, pad, 1, groups), x, w, groups)
        out.backward(torch.ones_like(out))

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7, 9])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(f"grouped conv forward + backward, CPU, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print("| batch × C × size | kernel | NCHW ms | channels-last copy ms | ratio | preferred ÷ NCHW |")
    print("|---|---|---|---|---|---|")
    for batch, channels, size in SHAPES:
        for k in args.kernels:
            x = torch.randn(batch, channels, size, size, requires_grad=True)
            w = torch.randn(channels, 1, k, k, requires_grad=True)
            times = time_interleaved({"nchw": _step(x, w, False), "cl": _step(x, w, True),
                                      "preferred": _preferred(x, w)}, args.rounds, device)
            print(f"| {batch}×{channels}×{size}² | {k}×{k} | {1e3 * times['nchw']:.2f} | {1e3 * times['cl']:.2f} | "
                  f"{times['cl'] / times['nchw']:.2f} | {times['preferred'] / times['nchw']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
