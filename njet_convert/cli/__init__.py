"""``njet-convert``: convert a CNN into an N-Jet network from the command line (docs/design.md, "Command line").

    njet-convert MODEL [--order 3] [--k 2] [--checkpoint PATH | --pretrained] [--out DIR] [--calibrate DATA]
                       [--finetune DATA --epochs E] [--distill] [--export-onnx] [--device auto|cpu|cuda]
                       [--dry-run] [--quiet] [--json]
    njet-convert --list-recipes

MODEL resolves in this order: a recipe (name, alias or YAML path), a timm name (the paper's zoo is registered in
timm), a torchvision name (``tv:`` prefix forces it), ``package.module:callable``. The output folder gets the
weights and config (:func:`njet_convert.save`), ``report.md``, ``report.json``, the fine-tuning files, ``model.onnx``
and ``manifest.json``, all written into a temporary sibling folder that replaces ``--out`` whole at the end
(docs/design.md, "Atomic output"); the report table and a one-line summary go to stdout, progress and notes to
stderr; ``--quiet`` prints nothing but errors. Bad input exits 2 with one line on stderr; an internal error
exits 1, with the traceback written to a log file whose path it prints.

One concept per module: :mod:`.parser` (options and value parsers), :mod:`.models` (MODEL → network),
:mod:`.defaults` (built-in and recipe defaults), :mod:`.run` (the stages of a run), :mod:`.stages` (what a run
writes), :mod:`.output` (the output folder), :mod:`.exits` (exit codes and signals), :mod:`.summary` (stdout).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..host_memory import reuse_host_memory
from .exits import CtrlC, Stopped, exit_code
from .models import ModelSpec, resolve_model
from .parser import build_parser
from .run import run_command

__all__ = ["ModelSpec", "Stopped", "build_parser", "main", "resolve_model"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``njet-convert`` console script; returns the exit code (0, 1 internal, 2 bad input,
    128 + signal when stopped)."""
    reuse_host_memory()  # before the first tensor: PyTorch reads its huge-page switch once (njet_convert.host_memory)
    args = list(sys.argv[1:] if argv is None else argv)
    with CtrlC() as ctrl_c:
        return exit_code(lambda: run_command(args), ctrl_c)
