"""The ``njet-convert`` argument parser and its value parsers (docs/design.md, "Command line").

Building the parser imports no torch: ``njet-convert --help`` stays fast. The fine-tuning options come from
:mod:`njet_convert.training.cli` when that module is installed.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import OrderSpec

__all__ = ["PROG", "build_parser", "training_cli"]

PROG = "njet-convert"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (a UserError) instead of usage + message + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {PROG} --help)")


def _order(text: str) -> OrderSpec:
    from ..config import parse_order

    try:
        return parse_order(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(name: str, kind: type = float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value

    return parse


def _k(text: str) -> float:
    """--k: positive, and within the bound :class:`~njet_convert.config.ConvertConfig` checks (one bound, one
    message: filters at the largest default σ must fit the layer's size limit)."""
    value: float = _positive("--k")(text)
    from ..config import _check_k

    try:
        _check_k(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _input_size(text: str) -> tuple[int, int, int]:
    parts = re.split(r"[,x ]+", text.strip())
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"must be C,H,W (e.g. 3,224,224), got {text!r}")
    return size[0], size[1], size[2]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (fine-tuning options come from :mod:`njet_convert.training.cli` when present)."""
    p = _Parser(prog=PROG, conflict_handler="resolve",
                description="Convert a CNN into an N-Jet network (Pintea et al., TIP 2021).",
                epilog="MODEL: a recipe (see --list-recipes), a timm name, a torchvision name (tv:NAME) or "
                       "package.module:callable.")
    p.add_argument("model", nargs="?", metavar="MODEL", help="what to convert (see below)")
    g = p.add_argument_group("conversion")
    g.add_argument("--order", type=_order, metavar="ORDER|RULES",
                   help="N-Jet basis: an order of the paper's jet (3 in the paper), 'exact' (per conv the tensor basis "
                        "of its own kernel size: lossless, the original parameter count), or per-layer rules, first "
                        "match wins: e.g. depthwise=exact,*=3 (kinds depthwise/grouped/dense/pointwise, name globs, "
                        "re:regex) or JSON. Default: the recipe's; else 'exact' for pretrained weights (--checkpoint, "
                        "--pretrained), 3 for a network built new")
    g.add_argument("--k", type=_k, help="filter extent in σ: size 2⌈kσ⌉+1 (default 2)")
    g.add_argument("--subsample", choices=("safe", "keep"), help="strides -> safe subsampling, or keep them")
    g.add_argument("--r", type=_positive("--r"), help="safe subsampling: a point's factor is stride·2^((σ-σ0)/r), "
                   "so σ must grow by r to halve a map once more (default 4, the paper's, or the recipe's)")
    g.add_argument("--sigma", type=_positive("--sigma"), help="σ0 of N-Jet layers built new rather than fitted: "
                   "every layer of an untrained model (default 1, the paper's initialisation, or the recipe's)")
    g.add_argument("--calibrate", metavar="DATA", help="fit on real inputs: photos, a dataset name or image folder; "
                   "'synthetic': inputs made from the model's batch-norm statistics (no data needed)")
    g.add_argument("--calibration-images", type=_positive("--calibration-images", int), default=128, metavar="N",
                   help="images used with --calibrate (default 128)")
    g.add_argument("--recover", type=_positive("--recover"), metavar="SECONDS",
                   help="after --calibrate, distil towards the original for at most SECONDS (keeps the best state "
                        "on a held-out slice of the calibration images)")
    w = p.add_argument_group("weights")
    src = w.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH", help=".pth/.pt state dict or .safetensors")
    src.add_argument("--pretrained", action="store_true", help="download the hub weights (timm/torchvision)")
    w.add_argument("--num-classes", type=_positive("--num-classes", int), metavar="N", help="classifier size")
    w.add_argument("--input-size", type=_input_size, metavar="C,H,W", help="example input size")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="output folder (default out/<MODEL>/)")
    o.add_argument("--export-onnx", action="store_true", help="also write a verified model.onnx")
    o.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    o.add_argument("--data-dir", metavar="DIR", help="where datasets are found or downloaded ($NJET_DATA)")
    o.add_argument("--dry-run", action="store_true", help="show what would change; fit nothing, write nothing")
    o.add_argument("--list-recipes", action="store_true", help="list the named recipes and exit")
    o.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of tables")
    _add_training(p)
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print nothing but errors (no progress, notes, table or summary)")
    return p


def training_cli() -> ModuleType | None:
    """:mod:`njet_convert.training.cli`, or None in a build without fine-tuning."""
    try:
        return importlib.import_module("njet_convert.training.cli")
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("njet_convert.training"):
            return None
        raise


def _add_training(parser: argparse.ArgumentParser) -> None:
    module = training_cli()
    if module is not None:
        module.add_training_arguments(parser)
