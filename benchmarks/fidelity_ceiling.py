"""The ceiling of an order-N conversion: what each converted layer's approximation costs in top-1 agreement.

A network is converted and calibrated once (``convert(..., calibration=...)``); then, one layer at a time, that
layer's original kernel is restored (the N-Jet layer computes the original conv at stride 1, the following batch
norm gets its original statistics back, everything else stays calibrated) and the held-out agreement with the
original network is measured. The gain of each restoration ranks the layers by what their approximation costs, and
"all restored" checks the harness (it must give 100 %). At order 3 a 3×3 kernel loses its x²y² direction and a
5×5 kernel 15 of its 25 directions; this table puts a number on it.

    python benchmarks/fidelity_ceiling.py --network mobilenet_v2 --calibration 256 --heldout 300 --threads 1

Times are CPU seconds of this process (they include the held-out passes).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

import njet_convert
from njet_convert.fidelity import agreement, logits
from njet_layers import NJetConv2d

__all__ = ["main", "restore_layer"]


def restore_layer(converted: nn.Module, original: nn.Module, name: str) -> None:
    """Make converted layer ``name`` compute the original conv's kernel (at its stride-1 grid) and give the batch norm
    that directly consumes it its original running statistics (the calibration shifted them)."""
    layer = converted.get_submodule(name)
    orig = original.get_submodule(name)
    weight = orig.weight.detach()
    if not isinstance(layer, NJetConv2d):
        raise ValueError(f"{name!r} is not an NJetConv2d")
    layer.forward = lambda x, layer=layer, weight=weight: layer._convolve(x, weight)  # type: ignore[method-assign]
    norm = _following_norm(converted, name)
    if norm is not None:
        source = original.get_submodule(norm)
        target = converted.get_submodule(norm)
        target.running_mean.copy_(source.running_mean)
        target.running_var.copy_(source.running_var)


def _following_norm(model: nn.Module, name: str) -> str | None:
    """The batch norm whose name follows ``name`` in module order (conv -> its batch norm, possibly after a
    subsampling module), or None."""
    names = [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    for n in names[names.index(name) + 1 :][:3]:
        if isinstance(modules[n], nn.modules.batchnorm._BatchNorm):
            return n
    return None


def _networks(name: str):
    from njet_convert.models import real_weights

    if name == "mobilenet_v2":
        return real_weights.load_mobilenet_v2(), None
    if name == "efficientnet_lite0":
        return real_weights.load_efficientnet_lite0(), (real_weights.LITE0_MEAN, real_weights.LITE0_STD)
    raise ValueError(f"unknown network {name!r}")


def renormalised(images: Tensor, stats) -> Tensor:
    """ImageNet-normalised ``images`` re-normalised with ``(mean, std)`` (None: unchanged)."""
    if stats is None:
        return images
    from njet_convert.data.photos import IMAGENET_MEAN, IMAGENET_STD

    def col(v):
        return torch.tensor(v).view(1, 3, 1, 1)

    raw = images * col(IMAGENET_STD) + col(IMAGENET_MEAN)
    return (raw - col(stats[0])) / col(stats[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mobilenet_v2", choices=["mobilenet_v2", "efficientnet_lite0"])
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from njet_convert.data.photos import calibration_photos, heldout_photos

    original, stats = _networks(args.network)
    calib = renormalised(calibration_photos(args.calibration, args.size), stats)
    held = renormalised(heldout_photos(args.heldout, args.size), stats)
    reference = logits(original, held)
    cpu = time.process_time()
    converted, report = njet_convert.convert(original, order=args.order, calibration=calib)
    base, base_kl = agreement(converted, reference, held)
    print(f"{args.network}, order {args.order}, {args.calibration} calibration / {args.heldout} held-out photos at "
          f"{args.size} px: calibrated {100 * base:.1f} % (KL {base_kl:.4f}), {time.process_time() - cpu:.0f} s CPU")
    print(f"{'restored layer':<28} {'kernel':>6} {'sigma':>6} {'size':>4} {'agree':>7} {'gain':>6} {'KL':>7}")
    names = [r.name for r in report.layers]
    state = {n: b.clone() for n, b in converted.state_dict().items()}
    for name in [*names, "<all>"]:
        work = _fresh(converted, state)
        for n in (names if name == "<all>" else [name]):
            restore_layer(work, original, n)
        agree, kl = agreement(work, reference, held)
        record = next((r for r in report.layers if r.name == name), None)
        kernel = "x".join(map(str, record.original_shape[-2:])) if record is not None else "-"
        sigma = f"{record.sigma:.3f}" if record is not None else "-"
        size = str(record.kernel_size) if record is not None else "-"
        print(f"{name:<28} {kernel:>6} {sigma:>6} {size:>4} {100 * agree:>6.1f}% {100 * (agree - base):>+5.1f} "
              f"{kl:>7.4f}", flush=True)


def _fresh(converted: nn.Module, state: dict) -> nn.Module:
    import copy

    work = copy.deepcopy(converted)
    work.load_state_dict(state)
    return work


if __name__ == "__main__":
    main()
