"""Time to compose one layer's kernel ``α · B(σ)`` and back-propagate through it: the single autograd node of
:func:`njet_layers.kernel_compose.compose_kernel` against the same kernel built op by op through autograd.

Why: on CIFAR-sized maps a converted layer's convolution takes well under a millisecond, so the forty-odd small
operations of composing its kernel through autograd were a third of the training step (docs/layer.md, "Kernel
composition"). Rows are layers of ResNet-32's widths and of a MobileNetV2 depthwise layer, at a converted σ (3×3
filters) and a grown one; each pair is timed in interleaved rounds (median).

    python benchmarks/kernel_compose.py --threads 2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from layer_speed import time_interleaved
from torch import Tensor

from njet_layers import NJetConv2d
from njet_layers.kernel_compose import compose_kernel, compose_kernel_autograd

__all__ = ["main"]

LAYERS = ((16, 16, 1), (64, 64, 1), (96, 96, 96))  # (in, out, groups)
ORDERS: dict[str, object] = {"tensor 3×3": (2, 2), "jet 3": 3}


def _steps(layer: NJetConv2d) -> dict[str, Callable[[], object]]:
    """Forward and forward + backward of both compositions for ``layer``'s parameters."""
    args = (layer.sigma_bounds, layer.order, layer.radius, layer.mixes)
    alpha, log_sigma = layer.alpha, layer.log_sigma

    def backward(compose: Callable[..., Tensor]) -> Callable[[], object]:
        return lambda: compose(alpha, log_sigma, *args).sum().backward()

    with_grad = {"node": compose_kernel, "autograd": compose_kernel_autograd}
    steps: dict[str, Callable[[], object]] = {}
    for name, compose in with_grad.items():
        steps[f"fwd {name}"] = lambda compose=compose: compose(alpha, log_sigma, *args)
        steps[f"fwd+bwd {name}"] = backward(compose)
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.45, 1.3])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} rounds={args.rounds}\n")
    print("| layer | basis | σ | filter | fwd node / autograd µs | fwd+bwd node / autograd µs | autograd ÷ node |")
    print("|---|---|---|---|---|---|---|")
    for c_in, c_out, groups in LAYERS:
        for basis_name, order in ORDERS.items():
            for sigma in args.sigmas:
                layer = NJetConv2d(c_in, c_out, order=order, sigma=sigma, groups=groups, device=device)  # type: ignore[arg-type]
                us = {n: 1e6 * s for n, s in time_interleaved(_steps(layer), args.rounds, device).items()}
                s = layer.kernel_size
                cells = [f"{us[f'{p} node']:.0f} / {us[f'{p} autograd']:.0f}" for p in ("fwd", "fwd+bwd")]
                print(f"| {c_in}→{c_out}/{groups} | {basis_name} | {sigma} | {s}×{s} | " + " | ".join(cells)
                      + f" | {us['fwd+bwd autograd'] / us['fwd+bwd node']:.2f} |")


if __name__ == "__main__":
    main()
