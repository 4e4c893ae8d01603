"""``python -m njet_convert.training MODEL --finetune DATA --epochs E [--out DIR] [--distill --teacher SPEC]``.

MODEL (and ``--teacher``) is a folder written by ``njet_convert.save`` or ``package.module:callable`` returning an
``nn.Module``. A folder whose architecture is a ``module:callable`` loads only with ``--trust-code`` (loading
would import and run that code). Runs under ``torchrun --nproc_per_node N`` as well. Bad input exits with code 2
and one line.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import first_line
from ..host_memory import reuse_host_memory
from ..record import Architecture, find_architecture
from .cli import add_training_arguments, run_training

if TYPE_CHECKING:
    from torch import nn

__all__ = ["load_model_spec", "main"]


def load_model_spec(spec: str, trust_code: bool = False) -> nn.Module:
    """A model from a saved folder (``njet_convert.load``; ``trust_code`` as there) or ``package.module:callable``
    (named on the command line by the user: built as asked)."""
    if Path(spec).is_dir():
        from njet_convert.serialization import load

        return load(spec, trust_code=trust_code)
    if ":" not in spec or Architecture(spec).kind != "code":
        raise ValueError(f"model must be a saved model folder or package.module:callable, got {spec!r}")
    arch = find_architecture(spec)  # what the name means is decided in one place, for njet-convert as well
    if arch is None:
        raise ValueError(f"model must be a saved model folder or package.module:callable, got {spec!r}")
    model = arch.build(trust_code=True)
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def main(argv: list[str] | None = None) -> int:
    reuse_host_memory()  # before the first tensor (njet_convert.host_memory)
    parser = argparse.ArgumentParser(prog="python -m njet_convert.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="saved model folder or package.module:callable")
    parser.add_argument("--teacher", help="original network for --distill (folder or package.module:callable)")
    parser.add_argument("--out", default="finetune_out", help="output folder (checkpoint, metrics, plots)")
    parser.add_argument("--trust-code", action="store_true",
                        help="allow a saved folder whose architecture is package.module:callable (runs that code)")
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    from .finetune import NonFiniteLossError

    try:
        if not args.finetune:
            raise ValueError("--finetune DATA is required")
        model = load_model_spec(args.model, args.trust_code)
        teacher = load_model_spec(args.teacher, args.trust_code) if args.teacher else None
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
