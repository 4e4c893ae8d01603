"""Fidelity of converted real pretrained networks: top-1 agreement and KL(original ‖ converted) on held-out images,
one table per network, one row per stage (``exact``, order 3 plain / calibrated / recovered, the network's best
per-layer order rule, other orders), with the largest relative logit difference, the parameters against the
original's, the CPU and wall time and the peak resident memory of the conversion; then (``--sweep``) ``exact`` over
the model-zoo sweep of the tests.

    python benchmarks/fidelity.py --calibration 256 --heldout 300 --threads 1 --recover 300
    python benchmarks/fidelity.py --networks --sweep      # the zoo sweep only

Networks (all offline, see ``njet_convert.models.real_weights``): torchvision MobileNetV2 and timm's
tf_efficientnet_lite0 (ImageNet weights) on the bundled photos (calibration and held-out sets share no source photo,
:mod:`njet_convert.data.photos`), the real MNIST CNN on the opencv digits (disjoint halves), and a wide ResNet
(widths 32-128-256) trained here on Fashion-MNIST (``benchmarks/fidelity_wide.py``; calibration images from the
training split, held-out ones from the test split). Every row is ``njet_convert.convert(model, order=...,
calibration=..., recover=...)`` with its defaults: what users get. "recovered" rows include the calibration (the time
is the whole conversion). Peak GB is the process's peak resident memory during that call (model, images and Python
included). The sweep converts randomly initialised timm and torchvision networks at 64-96 px (no held-out
agreement: random logits; the max relative logit difference is the figure).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import njet_convert
from njet_convert.export.freeze import max_relative_error
from njet_convert.fidelity import agreement, logits
from njet_convert.models.sweep import SWEEP, build_sweep_model

__all__ = ["main"]


@dataclass
class _Case:
    name: str
    model: nn.Module
    calibration: Tensor
    heldout: Tensor
    note: str
    rule: str  # the per-layer order rule that held this network best in earlier measurements (a calibrated row)


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_gb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _photos(args, stats=None) -> tuple[Tensor, Tensor]:
    from njet_convert.data.photos import IMAGENET_MEAN, IMAGENET_STD, calibration_photos, heldout_photos

    calib, held = calibration_photos(args.calibration, args.size), heldout_photos(args.heldout, args.size)
    if stats is None:
        return calib, held

    def col(v):
        return torch.tensor(v).view(1, 3, 1, 1)

    def renorm(x):
        return (x * col(IMAGENET_STD) + col(IMAGENET_MEAN) - col(stats[0])) / col(stats[1])

    return renorm(calib), renorm(held)


def _mobilenet_v2(args) -> _Case:
    from njet_convert.models.real_weights import load_mobilenet_v2

    calib, held = _photos(args)
    return _Case("MobileNetV2 (torchvision, ImageNet)", load_mobilenet_v2(), calib, held, "photos",
                 "depthwise=4,*=3")


def _efficientnet_lite0(args) -> _Case:
    from njet_convert.models.real_weights import LITE0_MEAN, LITE0_STD, load_efficientnet_lite0

    calib, held = _photos(args, (LITE0_MEAN, LITE0_STD))
    return _Case("EfficientNet-Lite0 (timm tf_efficientnet_lite0, ImageNet; 5x5 depthwise, TF-SAME)",
                 load_efficientnet_lite0(), calib, held, "photos", "depthwise=8,*=4")


def _mnist_cnn(args) -> _Case:
    from njet_convert.data import load_opencv_digits
    from njet_convert.models.real_weights import MNIST_MEAN, MNIST_STD, load_mnist_cnn

    images, _ = load_opencv_digits(pad_to=20)
    images = F.interpolate(images[:, None], size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    images = (images - MNIST_MEAN) / MNIST_STD
    images = images[torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))]
    return _Case("MNIST CNN (digit-recognizer-py)", load_mnist_cnn(), images[: args.calibration],
                 images[2500 : 2500 + max(args.heldout, 1000)], "opencv digits", "*=4")


def _wide_resnet(args) -> _Case:
    sys.path.insert(0, str(Path(__file__).parent))
    from fidelity_wide import _prepare, trained_model

    from njet_convert.data.fashion_mnist import load_fashion_mnist

    train, _ = load_fashion_mnist("train")
    test, _ = load_fashion_mnist("test")
    return _Case("wide ResNet 32-128-256 (trained here on Fashion-MNIST)", trained_model(12000),
                 _prepare(train[-args.calibration:]), _prepare(test[: max(args.heldout, 1000)]), "Fashion-MNIST", "*=4")


NETWORKS: dict[str, Callable] = {"mobilenet_v2": _mobilenet_v2, "efficientnet_lite0": _efficientnet_lite0,
                                 "mnist_cnn": _mnist_cnn, "wide_resnet": _wide_resnet}


def _stages(case: _Case, args) -> list[tuple[str, dict]]:
    """``exact``, then order 3 (plain, calibrated, the network's order rule, recovered), then the other orders."""
    out = [("exact", {"order": "exact"}), ("order 3 plain", {"order": 3}),
           ("order 3 calibrated", {"order": 3, "calibration": True})]
    if args.rules:
        out.append((f"order {case.rule} calibrated", {"order": case.rule, "calibration": True}))
    if args.recover > 0:
        out.append((f"order 3 calibrated + recovered {args.recover:g} s",
                    {"order": 3, "calibration": True, "recover": args.recover}))
    for order in (o for o in args.orders if o != 3):
        out.append((f"order {order} plain", {"order": order}))
        if order in args.calibrate_orders:
            out.append((f"order {order} calibrated", {"order": order, "calibration": True}))
    return out


def _run_stage(case: _Case, reference: Tensor, kwargs: dict) -> tuple[float, ...] | str:
    """(agreement, KL, max relative logit difference, parameters / original's, CPU s, wall s, peak GB)."""
    kwargs = dict(kwargs)
    if kwargs.pop("calibration", False):
        kwargs["calibration"] = case.calibration
    _reset_peak_rss()
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        converted, report = njet_convert.convert(case.model, **kwargs)
    except (ValueError, TypeError) as err:  # an option this version does not offer
        return f"n/a ({str(err).splitlines()[0][:60]})"
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = _peak_rss_gb()
    agree, kl = agreement(converted, reference, case.heldout)
    diff = max_relative_error(logits(converted, case.heldout), reference)
    return agree, kl, diff, report.params_after / report.params_before, cpu, wall, peak


def _sweep(order: str) -> None:
    """``order`` over the zoo sweep: convs converted, the parameters it adds, the max relative output difference."""
    print(f"\nzoo sweep, order {order!r} (random init, eval mode, 96 px for inception_v3, 64 px otherwise)")
    print(f"| {'network':<42} | {'convs':>5} | {'params +':>8} | {'max rel. out diff':>17} | {'convert s':>9} |")
    print(f"|{'-' * 44}|{'-' * 7}|{'-' * 10}|{'-' * 19}|{'-' * 11}|")
    for entry in SWEEP:
        label = entry.label
        torch.manual_seed(0)
        model = build_sweep_model(entry)
        x = torch.randn(2, 3, entry.size, entry.size)
        start = time.perf_counter()
        try:
            converted, report = njet_convert.convert(model, order=order)
        except ValueError as err:
            print(f"| {label:<42} | {'refused: ' + str(err).splitlines()[0][:90]} |", flush=True)
            continue
        seconds = time.perf_counter() - start
        with torch.no_grad():
            ref, out = model(x), converted.eval()(x)
        ref, out = (v["out"] if isinstance(v, dict) else v for v in (ref, out))
        added = report.params_after - report.params_before
        print(f"| {label:<42} | {len(report.layers):>5} | {added:>8,} | {max_relative_error(out, ref):>17.2e} | "
              f"{seconds:>9.2f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--sweep", action="store_true", help="also convert the zoo sweep with --sweep-order")
    parser.add_argument("--sweep-order", default="exact", help="order of the sweep (default exact)")
    parser.add_argument("--calibration", type=int, default=256, help="number of calibration images")
    parser.add_argument("--heldout", type=int, default=300, help="number of held-out images")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4], help="orders besides 3 (plain rows)")
    parser.add_argument("--calibrate-orders", type=int, nargs="*", default=[2, 4],
                        help="orders besides 3 that also get a calibrated row")
    parser.add_argument("--recover", type=float, default=0.0, help="recovery seconds for an extra order-3 row")
    parser.add_argument("--no-rules", dest="rules", action="store_false", help="skip the per-layer order-rule row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for key in args.networks:
        case = NETWORKS[key](args)
        reference = logits(case.model, case.heldout)
        print(f"\n{case.name}: {case.calibration.shape[0]} calibration / {case.heldout.shape[0]} held-out "
              f"{case.note} at {case.heldout.shape[-1]} px, torch threads={torch.get_num_threads()}")
        print(f"| {'stage':<44} | {'top-1 agree':>11} | {'KL':>7} | {'max rel. logit':>14} | {'params':>7} | "
              f"{'CPU s':>6} | {'wall s':>6} | {'peak GB':>7} |")
        print(f"|{'-' * 46}|{'-' * 13}|{'-' * 9}|{'-' * 16}|{'-' * 9}|{'-' * 8}|{'-' * 8}|{'-' * 9}|")
        for label, kwargs in _stages(case, args):
            result = _run_stage(case, reference, kwargs)
            if isinstance(result, str):
                print(f"| {label:<44} | {result:>41} |", flush=True)
                continue
            agree, kl, diff, params, cpu, wall, peak = result
            print(f"| {label:<44} | {100 * agree:>10.1f}% | {kl:>7.4f} | {diff:>14.2e} | {params:>6.3f}x | "
                  f"{cpu:>6.1f} | {wall:>6.1f} | {peak:>7.2f} |", flush=True)
    if args.sweep:
        _sweep(args.sweep_order)


if __name__ == "__main__":
    main()
