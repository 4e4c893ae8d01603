"""One ``njet-convert`` run, stage by stage (docs/design.md, "Command line"): parse, resolve MODEL (a recipe's
values become defaults), check ``--out``, build and load the network, calibrate, convert, then write everything
(:mod:`.stages`) and print the result (:mod:`.summary`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .defaults import fill_defaults, recipe_data, recipe_defaults
from .exits import api
from .models import ModelSpec, resolve_model
from .output import default_out, prepare_out
from .parser import PROG, build_parser
from .stages import write_run
from .summary import list_recipes, print_result, summary

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["Run", "run_command"]


@dataclass
class Run:
    """What the stages of one run share: the options, the model, ``--out``, the logger and the JSON result."""

    args: argparse.Namespace
    spec: ModelSpec
    out: Path | None
    log: Callable[[str], None]
    result: dict[str, Any] = field(default_factory=dict)


def run_command(argv: list[str]) -> int:
    """The run ``argv`` asks for; exit code 0, or an exception that :func:`.exits.exit_code` turns into one."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_recipes:
        return list_recipes(args.json)
    if not args.model:
        raise UserError(f"MODEL is required (a recipe, timm or torchvision name; see {PROG} --help)")
    if getattr(args, "resume", None) and not getattr(args, "finetune", None):
        raise UserError("--resume needs --finetune DATA (the data the interrupted run was trained on)")
    spec = resolve_model(args.model, args.num_classes)
    if spec.recipe is not None:  # recipe values become defaults; explicit options still win
        parser.set_defaults(**recipe_defaults(spec.recipe, parser))
        args = parser.parse_args(argv)
    fill_defaults(args)
    recipe_data(args, spec)
    if getattr(args, "finetune", None):
        _check_finetune_options(args)
    quiet = args.quiet

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    out = None if args.dry_run else prepare_out(args.out or default_out(args.model))
    run = Run(args, spec, out, log)
    # In --json mode stdout carries the JSON alone: anything the library prints goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        text = _convert(run)
    print_result(run.result, text, json_mode=args.json, quiet=quiet)
    return 0


def _check_finetune_options(args: argparse.Namespace) -> None:
    """Refuse a fine-tuning option the config rejects (``--search-max-macs`` without ``--resolution-search``, a
    negative ``--search-confidence``…) before anything is converted or written; the run builds it again later."""
    from njet_convert.training.cli import config_from_args

    try:
        config_from_args(args)
    except ValueError as err:
        raise UserError(str(err)) from None


def _device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _convert(run: Run) -> str:
    """Build, load, calibrate and convert; write the outputs unless ``--dry-run``; the report table."""
    import torch

    import njet_convert

    from ..config import EXACT, describe_order

    args, spec, log = run.args, run.spec, run.log
    start = time.perf_counter()
    if args.recover and not args.calibrate:
        raise UserError("--recover needs --calibrate DATA (it distils on the calibration images)")
    device = _device(args.device)
    model, weights = _load_model(run)
    if args.order is None:  # pretrained kernels convert losslessly; a network built new gets the paper's jet
        args.order = EXACT if weights != "untrained" else 3
    if args.calibrate and weights == "untrained":
        raise UserError(f"--calibrate needs the network's weights (--checkpoint PATH or --pretrained): an untrained "
                        f"{spec.name} is built new at σ0 (--sigma), there are no kernels to calibrate")
    input_size = args.input_size or spec.input_size or _cfg_input_size(model)
    if args.input_size:
        _check_channels(model, args.input_size)
    model = model.to(device).eval()
    calibration: Any = None
    if args.calibrate == "synthetic" and not args.dry_run:
        calibration = "synthetic"
    elif args.calibrate and not args.dry_run:
        calibration = _calibration(run, input_size).to(device)
    log(f"converting {spec.name} (order {describe_order(args.order)}, k {args.k:g}, subsample {args.subsample}"
        f"{', calibrated on ' + args.calibrate if calibration is not None else ''}) on {device} ...")
    untrained = weights == "untrained"  # nothing to fit: the layers are built new at σ0 = --sigma (paper: 1)
    options = {"progress": not args.quiet, "fit": not args.dry_run and not untrained, "input_size": tuple(input_size),
               "r": args.r, "sigma": args.sigma if untrained else None}
    if args.recover:
        options["recover"] = args.recover
    if spec.recipe is not None and (spec.recipe.convert.include or spec.recipe.convert.exclude):
        options.update(include=spec.recipe.convert.include, exclude=spec.recipe.convert.exclude)
    njet_model, report = api(lambda: njet_convert.convert(model, order=args.order, k=args.k, subsample=args.subsample,
                                                          calibration=calibration, source=spec.source, **options),
                             "convert")
    for note in report.notes:
        log(f"note: {note}")
    example = torch.randn(2, *input_size, device=device)
    text = report.to_markdown()
    run.result.update(model=args.model, source=spec.source, recipe=getattr(spec.recipe, "name", None),
                      weights=weights, device=device, input_size=list(input_size), dry_run=args.dry_run,
                      out=str(run.out) if run.out else None, report=report.to_dict())
    if not args.dry_run:
        write_run(run, njet_model, model, report, example)
    run.result["seconds"] = round(time.perf_counter() - start, 2)
    run.result["summary"] = summary(run, report)
    return text


def _load_model(run: Run) -> tuple[nn.Module, str]:
    import torch

    args, spec, log = run.args, run.spec, run.log
    torch.manual_seed(getattr(args, "seed", 0))  # an untrained network's initialisation is --seed's, not the process's
    model = spec.build(args.pretrained)
    if args.pretrained:
        return model, "pretrained"
    if args.checkpoint:
        from ..checkpoints import load_checkpoint

        result = load_checkpoint(model, args.checkpoint)
        log(result.summary())
        run.result["checkpoint"] = {"path": result.path, "loaded": result.loaded, "missing": result.missing,
                                    "unexpected": result.unexpected, "stripped": result.stripped}
        return model, f"checkpoint:{args.checkpoint}"
    log(f"note: no weights given (--checkpoint PATH or --pretrained): {spec.name} is untrained (random "
        f"initialisation); its N-Jet layers are built new at sigma {args.sigma:g} (--sigma), not fitted")
    return model, "untrained"


def _check_channels(model: nn.Module, input_size: tuple[int, int, int]) -> None:
    """--input-size must have as many channels as the model's first convolution (first registered) takes."""
    from torch import nn

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != input_size[0]:
        raise UserError(f"--input-size {','.join(map(str, input_size))}: {input_size[0]} channel(s), but the "
                        f"model's first convolution takes {first.in_channels}")


def _cfg_input_size(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(int(s) for s in size) if size else (3, 224, 224)  # type: ignore[return-value]


def _calibration(run: Run, input_size: tuple[int, int, int]) -> Tensor:
    from ..data.datasets import calibration_images

    run.log(f"loading {run.args.calibration_images} calibration images from {run.args.calibrate} ...")
    return calibration_images(run.args.calibrate, run.args.calibration_images, input_size,
                              data_dir=run.args.data_dir)
