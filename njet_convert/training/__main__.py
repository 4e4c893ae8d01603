"""``python -m njet_convert.training MODEL --finetune DATA --epochs E [--out DIR] [--distill --teacher SPEC]``.

MODEL (and ``--teacher``) is a folder written by ``njet_convert.save`` or ``package.module:callable`` returning an
``nn.Module``. Runs under ``torchrun --nproc_per_node N`` as well. Bad input exits with code 2 and one line.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path

from torch import nn

from ..errors import first_line
from .cli import add_training_arguments, run_training
from .finetune import NonFiniteLossError

__all__ = ["load_model_spec", "main"]


def load_model_spec(spec: str) -> nn.Module:
    """A model from a saved folder (``njet_convert.load``) or ``package.module:callable``."""
    if Path(spec).is_dir():
        from njet_convert.serialization import load

        return load(spec)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"model {spec!r} not found ({exc})") from None
        model = factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {spec!r} returned {type(model).__name__}, not an nn.Module")
        return model
    raise ValueError(f"model must be a saved model folder or package.module:callable, got {spec!r}")


def main(argv: list[str] | None = None) -> int:
    import njet_convert  # noqa: F401  (torchvision guard before any torchvision import)

    parser = argparse.ArgumentParser(prog="python -m njet_convert.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="saved model folder or package.module:callable")
    parser.add_argument("--teacher", help="original network for --distill (folder or package.module:callable)")
    parser.add_argument("--out", default="finetune_out", help="output folder (checkpoint, metrics, plots)")
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.finetune is None:
            raise ValueError("--finetune DATA is required")
        model = load_model_spec(args.model)
        teacher = load_model_spec(args.teacher) if args.teacher else None
        result = run_training(args, model, teacher, args.out)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as exc:  # a diverged run: the user's settings
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    if result is not None and result.interrupted:
        print(f"interrupted; resume with --resume {result.checkpoint}", file=sys.stderr)
        return 128 + (result.signal or signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
