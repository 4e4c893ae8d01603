"""Forward + backward of a strided conv whose subsampling factor σ has moved off the integer stride: the pixels a
``nearest`` SafeSubsample keeps, computed as strided convs over arithmetic runs (what
:func:`njet_layers.sampled_conv.conv2d_at` does), by gathering the taps (its fallback for many runs), and as the
full stride-1 conv indexed afterwards, next to the exact grid of a converted start.

Why: after a few fine-tuning steps the factor of a converted network's stride-2 layers reads 2.0x, the kept rows
are no longer one grid, and the gather — once the only path off the grid — made a MobileNetV2 training step 1.4–1.7×
slower (``benchmarks/layer_speed.py --no-layers --nets resnet32 mobilenet_v2``, where the ResNet table runs first and
changes the random MobileNetV2 whose σ drifts). Shapes are MobileNetV2's stride-2 layers at 112 px, batch 8.

    python benchmarks/sampled_conv.py --threads 2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from layer_speed import time_interleaved

import njet_layers.sampled_conv as sampled

__all__ = ["main"]

LAYERS = (  # (input shape, weight shape, groups)
    ((8, 3, 112, 112), (32, 3, 3, 3), 1),
    ((8, 96, 56, 56), (96, 1, 3, 3), 96),
    ((8, 96, 56, 56), (96, 1, 5, 5), 96),
    ((8, 144, 28, 28), (144, 1, 5, 5), 144),
)


def _steps(x: torch.Tensor, w: torch.Tensor, groups: int, factor: float) -> dict[str, Callable[[], object]]:
    p = w.shape[-1] // 2
    n = int((x.shape[-1] - 1) / factor) + 1
    idx = (torch.arange(n) * factor).round().long()
    grid = torch.arange(n) * 2

    def at(rows: torch.Tensor, max_pieces: int) -> Callable[[], object]:
        def step() -> None:
            sampled.MAX_PIECES, saved = max_pieces, sampled.MAX_PIECES
            try:
                sampled.conv2d_at(x, w, None, rows, rows, (p, p), (1, 1), groups).sum().backward()
            finally:
                sampled.MAX_PIECES = saved
        return step

    return {
        "grid (factor 2)": at(grid, sampled.MAX_PIECES),
        "runs": at(idx, sampled.MAX_PIECES),
        "gather": at(idx, 0),
        "full + index": lambda: F.conv2d(x, w, None, 1, p, 1, groups)[..., idx, :][..., idx].sum().backward(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--factors", type=float, nargs="+", default=[2.03, 2.1])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} rounds={args.rounds}"
          " (ms, forward + backward)\n")
    print("| input | kernel | factor | runs per axis | grid (factor 2) | runs | gather | full + index |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, w_shape, groups in LAYERS:
        x = torch.randn(*shape, requires_grad=True)
        w = torch.randn(*w_shape, requires_grad=True)
        for factor in args.factors:
            steps = _steps(x, w, groups, factor)
            n = int((shape[-1] - 1) / factor) + 1
            runs = len(sampled._runs((torch.arange(n) * factor).round().long()) or [])
            ms = {k: 1e3 * v for k, v in time_interleaved(steps, args.rounds, torch.device("cpu")).items()}
            print(f"| {'×'.join(map(str, shape))} | {w_shape[-1]}×{w_shape[-1]}{' dw' if groups > 1 else ''} "
                  f"| {factor} | {runs} | " + " | ".join(f"{v:.1f}" for v in ms.values()) + " |")


if __name__ == "__main__":
    main()
