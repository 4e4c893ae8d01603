"""Training-step cost of converted networks against their originals: one SGD step (forward, loss, backward, update)
of the original, the lossless conversion (``order="exact"``) and the paper's order 3 (plain fit), timed round-robin
in one run so machine load hits them alike; median seconds and the ratio to the original.

    python benchmarks/step_cost.py --threads 2 --rounds 8
    python benchmarks/step_cost.py --threads 2 --rounds 8 --channels-last   # every network and input channels-last
    python benchmarks/step_cost.py --threads 2 --rounds 8 --sigma 1   # every N-Jet σ at 1: filters grown to 5×5

Networks: the real ImageNet MobileNetV2 (batch 16 at 128 px by default) and the zoo's CIFAR ResNet-32 (random
init, batch 64 at 32 px). Both conversions use safe subsampling (the default), so strided convs become stride-1
N-Jet convs whose following ``nearest`` SafeSubsample is fused into them in training (docs/design.md, "Lossless
conversion").
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import njet_convert
from njet_convert.host_memory import host_memory_summary, reuse_host_memory
from njet_convert.training.config import FinetuneConfig
from njet_convert.training.resolution_search import converted_points, hold_factors
from njet_layers import NJetConv2d

__all__ = ["main"]


def _step(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


@torch.no_grad()
def _with_sigma(model: nn.Module, sigma: float | None) -> nn.Module:
    """``model`` with every N-Jet layer's σ at ``sigma`` (clamped to the layer's bounds) and its subsampling factors
    held on their strides' grid as fine-tuning holds them (``FinetuneConfig.factor_hold``); as it is for ``None``."""
    if sigma is None:
        return model
    for layer in model.modules():
        if isinstance(layer, NJetConv2d):
            lo, hi = layer.sigma_bounds
            layer.log_sigma.fill_(math.log(min(max(sigma, lo), hi)))
    hold = FinetuneConfig().factor_hold
    if hold is not None and converted_points(model):
        hold_factors(model, hold)
    return model


def _networks(args: argparse.Namespace) -> list[tuple[str, Callable[[], nn.Module], int, int]]:
    import timm

    from njet_convert.models.real_weights import load_mobilenet_v2

    return [("MobileNetV2 (ImageNet weights)", load_mobilenet_v2, args.size, args.batch),
            ("ResNet-32 (CIFAR, random init)", lambda: timm.create_model("resnet32"), 32, 64)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="MobileNetV2 input size")
    parser.add_argument("--batch", type=int, default=16, help="MobileNetV2 batch")
    parser.add_argument("--channels-last", action="store_true",
                        help="run every network (the originals too) and its input in channels-last memory format")
    parser.add_argument("--sigma", type=float, default=None,
                        help="set every N-Jet layer's σ to this (inside its bounds), factors held as fine-tuning "
                             "holds them: a network whose σ has grown, e.g. 1 (5×5 filters where the fit left 3×3)")
    parser.add_argument("--plain-memory", action="store_true",
                        help="leave PyTorch's and glibc's allocation settings as they are (default: reuse host "
                             "memory across steps, njet_convert.host_memory)")
    args = parser.parse_args(argv)
    if not args.plain_memory:
        reuse_host_memory()  # before the first tensor
    memory = host_memory_summary()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"SGD training step, CPU, {args.threads} threads, median of {args.rounds} interleaved rounds"
          + (", channels-last" if args.channels_last else "")
          + (f", every N-Jet σ at {args.sigma:g}" if args.sigma is not None else "") + f"; host memory: {memory}")
    print(f"| {'network':<32} | {'variant':<18} | {'ms / step':>9} | {'ratio':>5} |")
    print(f"|{'-' * 34}|{'-' * 20}|{'-' * 11}|{'-' * 7}|")
    for label, build, size, batch in _networks(args):
        original = build()
        variants = {"original": original}
        for order in ("exact", 3):
            variants[f"N-Jet order {order}"] = _with_sigma(njet_convert.convert(original, order=order)[0], args.sigma)
        for model in variants.values():
            model.to(memory_format=layout)
        x, y = torch.randn(batch, 3, size, size).contiguous(memory_format=layout), torch.randint(0, 10, (batch,))
        steps = {name: _step(model, x, y) for name, model in variants.items()}
        for step in steps.values():
            step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["original"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"| {label:<32} | {name:<18} | {1e3 * median:>9.0f} | {median / base:>5.2f} |", flush=True)


if __name__ == "__main__":
    main()
