"""Export a saved (or fine-tuned) N-Jet model directory to ONNX.

Usage::

    python -m njet_convert.export MODEL_DIR --out model.onnx [--input-shape 1,3,224,224] [--dynamic-spatial]
        [--static-batch] [--opset 17] [--exporter torchscript|dynamo] [--form auto|dense|separable] [--no-verify]

``MODEL_DIR`` is a directory written by ``njet_convert.save`` (read back with ``njet_convert.load``; a folder whose
architecture is a ``package.module:callable`` needs ``--trust-code``, since loading imports and runs it). The input
shape defaults to the input size ``njet-convert`` recorded, else the model's timm ``pretrained_cfg['input_size']``,
with batch 1. Prints the per-layer freeze table and the verification figures; bad input exits with code 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import first_line
from ..record import record_of

if TYPE_CHECKING:
    from torch import nn

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m njet_convert.export", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="directory written by njet_convert.save")
    p.add_argument("--out", required=True, help="ONNX file to write (its directory must exist)")
    p.add_argument("--input-shape", help="N,C,H,W of the example input (default: from the model's config)")
    p.add_argument("--dynamic-spatial", action="store_true", help="symbolic height and width")
    p.add_argument("--static-batch", action="store_true", help="fixed batch size instead of a symbolic one")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    p.add_argument("--form", choices=("auto", "dense", "separable"), default="auto")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--trust-code", action="store_true",
                   help="allow a folder whose architecture is package.module:callable (runs that code)")
    return p


def _shape(text: str | None, model: nn.Module) -> tuple[int, ...]:
    if text:
        try:
            shape = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--input-shape must be integers like 1,3,224,224, got {text!r}") from None
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"--input-shape must be four positive integers N,C,H,W, got {text!r}")
        return shape
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    record = record_of(model)
    size = record.input_size if record is not None else None  # recorded by convert(input_size=...) / njet-convert
    size = size or (cfg.get("input_size") if isinstance(cfg, dict) else None)
    if not size:
        raise ValueError("--input-shape is required: the saved model does not record its input size")
    return (1, *(int(v) for v in size))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    import njet_convert
    from njet_convert.export import export_onnx

    try:
        model = njet_convert.load(args.model_dir, trust_code=args.trust_code)
        example = torch.randn(*_shape(args.input_shape, model), generator=torch.Generator().manual_seed(0))
        result = export_onnx(
            model, args.out, example, dynamic_batch=not args.static_batch, dynamic_spatial=args.dynamic_spatial,
            opset=args.opset, verify=not args.no_verify, exporter=args.exporter, form=args.form,
        )
    except (ValueError, ImportError, OSError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    print(result.freeze_report.table())
    for label, err in result.checks.items():
        print(f"onnxruntime vs PyTorch, {label}: max relative error {err:.3g}")
    print(f"wrote {result.path} ({result.exporter} exporter, opset {result.opset})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
