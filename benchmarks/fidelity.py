"""Fidelity of converting the real ImageNet MobileNetV2 to N-Jet layers: agreement with the original on held-out photos.

For order 2, 3, 4, without calibration (plain least-squares fits) and with data-aware calibration on unlabeled
photos (njet_convert.data.photos: calibration and held-out images come from disjoint photos), prints top-1
agreement with the original network, mean KL(original ‖ converted) of the softmax outputs, conversion/calibration
time (wall, CPU, and CPU as a multiple of one forward pass of the original over the calibration set: the ratio
is what carries over between machines) and the peak resident memory of the process during it.

    python benchmarks/fidelity.py --calibration 256 --heldout 300 --threads 2

The conversion is ``njet_convert.convert(model, order=..., calibration=..., subsample="safe")``: what users get.
Peak GB is the process's peak resident memory during that call (it includes the model, the photos and Python).
"""

from __future__ import annotations

import argparse
import time

import torch

import njet_convert
from njet_convert.data.photos import calibration_photos, heldout_photos
from njet_convert.fidelity import agreement, logits
from njet_convert.fitting import CalibrationOptions
from njet_convert.models.real_weights import load_mobilenet_v2

__all__ = ["main"]


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
    parser.add_argument("--subsample", default="safe", choices=["safe", "keep"], help="convert(subsample=...)")
    parser.add_argument("--no-pointwise", action="store_true", help="do not refit the 1×1 convs")
    parser.add_argument("--sigmas-per-size", type=int, default=CalibrationOptions.sigmas_per_size,
                        help="σ candidates per filter size in the calibration")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    original = load_mobilenet_v2()
    calib = calibration_photos(args.calibration, args.size)
    held = heldout_photos(args.heldout, args.size)
    opts = CalibrationOptions(max_positions=args.max_positions, batchnorm=args.batchnorm, ridge=args.ridge,
                              refit_pointwise=not args.no_pointwise, sigmas_per_size=args.sigmas_per_size)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for i in range(0, calib.shape[0], 32):
            original(calib[i : i + 32])
    forward, forward_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"MobileNetV2 (ImageNet weights), k={args.k:g}, {args.calibration} calibration / {args.heldout} held-out "
          f"photos at {args.size} px, torch threads={torch.get_num_threads()}; one forward pass of the original "
          f"over the calibration set: {forward:.1f} s wall, {forward_cpu:.1f} s CPU (the times below compare to it)")
    reference = logits(original, held)
    print(f"{'order':>5} {'calibration':>11} {'top-1 agree':>11} {'KL':>8} {'time s':>7} {'cpu s':>7} {'x fwd':>6} "
          f"{'peak GB':>7}")
    for order in args.orders:
        for data in (None, calib):
            _reset_peak_rss()
            start, cpu = time.perf_counter(), time.process_time()
            converted, _ = njet_convert.convert(original, order=order, k=args.k, subsample=args.subsample,
                                                calibration=data, calibration_options=opts)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - cpu
            peak = _peak_rss_gb()
            agree, kl = agreement(converted, reference, held)
            label = "none" if data is None else str(args.calibration)
            print(f"{order:>5} {label:>11} {100 * agree:>10.1f}% {kl:>8.4f} {elapsed:>7.1f} {elapsed_cpu:>7.1f} "
                  f"{elapsed_cpu / forward_cpu:>6.1f} {peak:>7.2f}", flush=True)
            del converted


if __name__ == "__main__":
    main()
