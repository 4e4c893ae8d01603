"""Forward + backward of a convolution on an NCHW tensor, against the same convolution run on a channels-last copy
whose output goes back to NCHW (the copies counted) — the choice :mod:`njet_layers.conv_layout` makes for an N-Jet
layer's dense and sampled convolutions in training.

Why: a converted layer whose σ passes 0.5 trains as a 5×5 filter, and PyTorch's CPU convolution of a filter larger
than 3×3 runs slower in NCHW, the grouped weight gradient most. Grouped shapes are MobileNetV2's depthwise layers at
128 px, batch 16 (what ``benchmarks/step_cost.py`` trains); ungrouped ones are ResNet-32's (16–64 channels on
32²–8² maps, batch 64), the layer benchmark's (64 channels at 32², 32 at 112², batch 32 and 1) and a stem's (3
channels at 112²); stride 1. The last column is what ``NJetConv2d`` does (the preferred layout) against the plain
NCHW call.

    python benchmarks/conv_layout.py --threads 2                  # grouped and ungrouped
    python benchmarks/conv_layout.py --threads 2 --only ungrouped --kernels 3 5 7
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from layer_speed import time_interleaved

from njet_layers.conv_layout import in_preferred_layout

__all__ = ["main"]

GROUPED = ((16, 32, 64), (16, 144, 32), (16, 192, 16), (16, 576, 8), (16, 960, 4))  # (batch, channels, map size)
UNGROUPED = ((64, 16, 16, 32), (64, 32, 32, 16), (64, 64, 64, 8), (32, 64, 64, 32), (1, 64, 64, 32),
             (32, 32, 32, 112), (1, 32, 32, 112), (16, 3, 32, 112))  # (batch, in, out channels, map size)


def _step(x: torch.Tensor, w: torch.Tensor, groups: int, layout: str) -> Callable[[], object]:
    pad = w.shape[-1] // 2

    def conv(inp: torch.Tensor) -> torch.Tensor:
        return F.conv2d(inp, w, None, 1, pad, 1, groups)

    def step() -> None:
        if layout == "preferred":
            out = in_preferred_layout(conv, x, w, groups)
        elif layout == "channels_last":
            out = conv(x.contiguous(memory_format=torch.channels_last)).contiguous()
        else:
            out = conv(x)
        out.backward(torch.ones_like(out))

    return step


def _cases(only: str) -> list[tuple[str, int, int, int, int]]:
    """(label, batch, in channels, out channels, map size) of each shape; groups = in channels when grouped."""
    grouped = [(f"{b}×{c}×{s}² depthwise", b, c, c, s) for b, c, s in GROUPED]
    ungrouped = [(f"{b}×{c}→{o}×{s}²", b, c, o, s) for b, c, o, s in UNGROUPED]
    return {"grouped": grouped, "ungrouped": ungrouped}.get(only, grouped + ungrouped)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7, 9])
    parser.add_argument("--only", choices=["grouped", "ungrouped"], help="one kind of shape (default: both)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(f"conv forward + backward, CPU, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print("| batch × C × size | kernel | NCHW ms | channels-last copy ms | ratio | preferred ÷ NCHW |")
    print("|---|---|---|---|---|---|")
    for label, batch, c_in, c_out, size in _cases(args.only):
        groups = c_in if label.endswith("depthwise") else 1
        for k in args.kernels:
            x = torch.randn(batch, c_in, size, size, requires_grad=True)
            w = torch.randn(c_out, c_in // groups, k, k, requires_grad=True)
            times = time_interleaved({layout: _step(x, w, groups, layout)
                                      for layout in ("nchw", "channels_last", "preferred")}, args.rounds, device)
            print(f"| {label} | {k}×{k} | {1e3 * times['nchw']:.2f} | {1e3 * times['channels_last']:.2f} | "
                  f"{times['channels_last'] / times['nchw']:.2f} | {times['preferred'] / times['nchw']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
