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
stderr. Bad input exits 2 with one line on stderr; an internal error
exits 1, with the traceback written to a log file whose path it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError, first_line
from .record import Architecture, find_architecture, import_callable, torchvision_names

__all__ = ["ModelSpec", "Stopped", "build_parser", "main", "resolve_model"]

PROG = "njet-convert"
REPORTING = "see 'Reporting problems' in the njet README for what to attach"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (a UserError) instead of usage + message + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {PROG} --help)")


def _order(text: str) -> int | dict[str, int]:
    from .config import parse_order

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
    """--k: positive, and small enough that filters at the largest default σ fit the layer's size limit."""
    value = _positive("--k")(text)
    from njet_layers.njet_conv import MAX_K, MAX_KERNEL_SIZE

    if value > MAX_K:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_K:g} (filters up to {MAX_KERNEL_SIZE} px; the paper "
                                         f"uses 2), got {text!r}")
    return value


def _input_size(text: str) -> tuple[int, int, int]:
    parts = re.split(r"[,x ]+", text.strip())
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"must be C,H,W (e.g. 3,224,224), got {text!r}")
    return size  # type: ignore[return-value]


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
    p.add_argument("--quiet", "-q", action="store_true", help="no progress, notes or table; errors still show")
    return p


def _training_cli() -> Any | None:
    try:
        return importlib.import_module("njet_convert.training.cli")
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("njet_convert.training"):
            return None
        raise


def _add_training(parser: argparse.ArgumentParser) -> None:
    module = _training_cli()
    if module is not None:
        module.add_training_arguments(parser)


# ----------------------------------------------------------------------------------------------------------------
# MODEL resolution


@dataclass
class ModelSpec:
    """A resolved MODEL: its architecture (what :func:`njet_convert.load` rebuilds) and its recipe if any."""

    arch: Architecture
    recipe: Any = None
    input_size: tuple[int, int, int] | None = None

    @property
    def name(self) -> str:
        return self.arch.builder

    @property
    def source(self) -> dict[str, Any]:
        return self.arch.to_json()

    def build(self, pretrained: bool) -> Any:
        """The network (hub weights when ``pretrained``); UserError for what the user can fix. The user named this
        MODEL on the command line, so a ``module:callable`` is trusted."""
        def make() -> Any:
            return self.arch.build(pretrained=pretrained, trust_code=True)

        if not pretrained:
            return _module(_api(lambda: _call_with_kwargs(make, self.name), f"building {self.name}"), self.name)
        if self.arch.kind == "code":
            raise UserError(f"--pretrained works for timm and torchvision names, not {self.name!r}; "
                            "use --checkpoint PATH")
        from .checkpoints import pretrained_or_exit

        host = "huggingface.co" if self.arch.kind == "timm" else "download.pytorch.org"
        return _module(_api(lambda: pretrained_or_exit(make, self.name, host), f"--pretrained {self.name}"),
                       self.name)


# A TypeError is the user's only when the call's arguments (MODEL kwargs, --num-classes) do not fit the signature.
_SIGNATURE_ERRORS = ("unexpected keyword argument", "required positional argument", "required keyword-only",
                     "positional argument but", "positional arguments but", "multiple values for argument")


def _call_with_kwargs(make: Callable[[], Any], name: str) -> Any:
    try:
        return make()
    except TypeError as err:
        if any(text in str(err) for text in _SIGNATURE_ERRORS):
            raise UserError(f"building {name}: {first_line(err)}") from None
        raise


def _module(model: Any, name: str) -> Any:
    from torch import nn

    if not isinstance(model, nn.Module):
        raise UserError(f"MODEL {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _api(fn: Callable[[], Any], what: str) -> Any:
    """Run an API call; ValueError (bad input by the API's contract) becomes a UserError. Any other exception,
    TypeError included, is a bug somewhere and stays an internal error."""
    try:
        return fn()
    except UserError:
        raise
    except ValueError as err:
        raise UserError(f"{what}: {first_line(err)}") from None
    except RuntimeError as err:
        if "pretrained" in str(err).lower() and "weights" in str(err).lower():
            raise UserError(f"{what}: {first_line(err)}; use --checkpoint PATH") from None
        raise


def resolve_model(name: str, num_classes: int | None = None) -> ModelSpec:
    """Resolve MODEL (see the module doc); UserError with close matches when nothing fits."""
    from .recipes import find_recipe, load_recipe, recipe_names

    recipe = None
    if name.endswith((".yaml", ".yml")) or find_recipe(name) is not None:
        recipe = load_recipe(name)
        spec = _resolve_plain(recipe.model.name)
        if spec is None:
            raise UserError(f"recipe {name!r} names an unknown model {recipe.model.name!r}")
        spec = ModelSpec(Architecture(spec.arch.name, {**spec.arch.kwargs, **recipe.model.kwargs}), recipe,
                         tuple(recipe.model.input_size) if recipe.model.input_size else None)  # type: ignore[arg-type]
    else:
        spec = _resolve_plain(name)
        if spec is None:
            import timm

            pool = list(dict.fromkeys(recipe_names() + timm.list_models() + torchvision_names()))
            close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see --list-recipes, timm.list_models()"
            raise UserError(f"unknown model {name!r}{hint}")
    if num_classes is not None:
        spec = ModelSpec(Architecture(spec.arch.name, {**spec.arch.kwargs, "num_classes": num_classes}),
                         spec.recipe, spec.input_size)
    return spec


def _resolve_plain(name: str) -> ModelSpec | None:
    arch = find_architecture(name)
    prefix, _, plain = name.partition(":")
    if arch is None and prefix in ("tv", "torchvision"):
        close = difflib.get_close_matches(plain, torchvision_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown torchvision model {plain!r}{hint}")
    if arch is not None and arch.kind == "code":
        import_callable(name)  # fails now, in one line, when it does not exist
    return ModelSpec(arch) if arch is not None else None


# ----------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    args: argparse.Namespace
    spec: ModelSpec
    out: Path | None
    log: Callable[[str], None]
    result: dict[str, Any] = field(default_factory=dict)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``njet-convert`` console script; returns the exit code (0, 1 internal, 2 bad input,
    128 + signal when stopped)."""
    with _CtrlC() as ctrl_c:
        return _run_main(list(sys.argv[1:] if argv is None else argv), ctrl_c)


class _CtrlC:
    """Remembers a Ctrl-C (and still raises KeyboardInterrupt): an import it broke can fail later with another
    error (ImportError, RecursionError), and that is still an interrupted run, not an internal error."""

    def __init__(self) -> None:
        self.seen = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _run_main(argv: list[str], ctrl_c: _CtrlC) -> int:
    try:
        return _main(argv)
    except UserError as err:
        print(f"{PROG}: error: {first_line(err)}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"{PROG}: {first_line(err)}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if ctrl_c.seen:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        if _disk_full(err):
            print(f"{PROG}: error: no space left on the device while writing ({first_line(err)}): free some space "
                  "and run again", file=sys.stderr)
            return 2
        log = _write_traceback()
        print(f"{PROG}: internal error: {type(err).__name__}: {first_line(err)} — the traceback is in {log}; "
              f"{REPORTING}", file=sys.stderr)
        return 1


class Stopped(Exception):
    """A run stopped by a signal (fine-tuning kept its checkpoint): exit ``128 + signal``, like the shell."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or its cause) is a full disk or quota: OSError ENOSPC/EDQUOT, or a library's wrapped one."""
    import errno

    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(err) for text in ("No space left on device", "Disk quota exceeded", "os error 28")):
            return True
        err = err.__cause__ or err.__context__
    return False


def _write_traceback() -> str:
    fd, path = tempfile.mkstemp(prefix="njet-convert-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(traceback.format_exc())
    return path


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_recipes:
        return _list_recipes(args)
    if not args.model:
        raise UserError(f"MODEL is required (a recipe, timm or torchvision name; see {PROG} --help)")
    if getattr(args, "resume", None) and not getattr(args, "finetune", None):
        raise UserError("--resume needs --finetune DATA (the data the interrupted run was trained on)")
    spec = resolve_model(args.model, args.num_classes)
    if spec.recipe is not None:  # recipe values become defaults; explicit options still win
        parser.set_defaults(**_recipe_defaults(spec.recipe, parser))
        args = parser.parse_args(argv)
    _fill_defaults(args)
    _recipe_data(args, spec)
    quiet = args.quiet

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    out = None if args.dry_run else _prepare_out(args.out or os.path.join("out", _safe(args.model)))
    run = _Run(args, spec, out, log)
    # In --json mode stdout carries the JSON alone: anything the library prints goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        text = _convert(run)
    if args.json:
        print(json.dumps(run.result, indent=2, default=str))
    elif not quiet:
        print(text)
        print(run.result["summary"])
    else:
        print(run.result["summary"])
    return 0


def _fill_defaults(args: argparse.Namespace) -> None:
    for key, value in (("k", 2.0), ("subsample", "safe"), ("r", 4.0), ("sigma", 1.0)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not hasattr(args, "finetune"):
        args.finetune = None


def _recipe_data(args: argparse.Namespace, spec: ModelSpec) -> None:
    """``--finetune`` without DATA: the recipe's data section (dataset and image size)."""
    if getattr(args, "finetune", None) != "":
        return
    data = getattr(spec.recipe, "data", None)
    if data is None:
        raise UserError("--finetune without DATA needs a recipe with a data section; give --finetune DATA")
    args.finetune = data.dataset
    if data.image_size is not None:
        args.image_size = data.image_size


def _recipe_defaults(recipe: Any, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Parser defaults from a recipe: conversion settings, and the training ones the parser has options for."""
    values: dict[str, Any] = {"order": recipe.convert.order, "k": recipe.convert.k,
                              "subsample": recipe.convert.subsample, "r": recipe.convert.r,
                              "sigma": recipe.convert.sigma}
    dests = {a.dest: a for a in parser._actions}
    train = recipe.train
    if train is not None:
        for key in ("optimizer", "lr", "alpha_decay", "weight_decay", "batch_size", "epochs", "milestones", "gamma"):
            if key in dests:
                values[key] = getattr(train, key)
        values["momentum"] = train.momentum  # no options of their own: read by config_from_args
        if train.betas is not None:
            values["betas"] = tuple(train.betas)
        schedule = dests.get("schedule")
        if schedule is not None and (not schedule.choices or train.schedule in schedule.choices):
            values["schedule"] = train.schedule
    return values


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(name).stem if name.endswith((".yaml", ".yml")) else name).strip("_") or "model"


def _prepare_out(path: str) -> Path:
    """The output folder, checked before any work: replaceable (absent, empty or written by njet) and its parent
    writable (the run writes into a temporary sibling folder and swaps it in at the end)."""
    from .serialization import check_replaceable

    out = Path(path)
    check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.write-test-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write to output directory {path!r}: {err.strerror or err}") from None
    return out


def _device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _convert(run: _Run) -> str:
    import torch

    import njet_convert

    from .config import EXACT, describe_order

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
    calibration = None
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
    njet_model, report = _api(lambda: njet_convert.convert(model, order=args.order, k=args.k, subsample=args.subsample,
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
        _write_run(run, njet_model, model, report, example)
    run.result["seconds"] = round(time.perf_counter() - start, 2)
    run.result["summary"] = _summary(run, report)
    return text


def _load_model(run: _Run) -> tuple[Any, str]:
    args, spec, log = run.args, run.spec, run.log
    model = spec.build(args.pretrained)
    if args.pretrained:
        return model, "pretrained"
    if args.checkpoint:
        from .checkpoints import load_checkpoint

        result = load_checkpoint(model, args.checkpoint)
        log(result.summary())
        run.result["checkpoint"] = {"path": result.path, "loaded": result.loaded, "missing": result.missing,
                                    "unexpected": result.unexpected, "stripped": result.stripped}
        return model, f"checkpoint:{args.checkpoint}"
    log(f"note: no weights given (--checkpoint PATH or --pretrained): {spec.name} is untrained (random "
        f"initialisation); its N-Jet layers are built new at sigma {args.sigma:g} (--sigma), not fitted")
    return model, "untrained"


def _check_channels(model: Any, input_size: tuple[int, int, int]) -> None:
    """--input-size must have as many channels as the model's first convolution (first registered) takes."""
    from torch import nn

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != input_size[0]:
        raise UserError(f"--input-size {','.join(map(str, input_size))}: {input_size[0]} channel(s), but the "
                        f"model's first convolution takes {first.in_channels}")


def _cfg_input_size(model: Any) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(int(s) for s in size) if size else (3, 224, 224)  # type: ignore[return-value]


def _calibration(run: _Run, input_size: tuple[int, int, int]) -> Any:
    from .data.datasets import calibration_images

    run.log(f"loading {run.args.calibration_images} calibration images from {run.args.calibrate} ...")
    return calibration_images(run.args.calibrate, run.args.calibration_images, input_size,
                              data_dir=run.args.data_dir)


def _finetune(run: _Run, njet_model: Any, original: Any, stage: Path) -> None:
    args = run.args
    if not getattr(args, "finetune", None):
        return
    module = _training_cli()
    if module is None:
        raise UserError("--finetune: the fine-tuning module is not installed in this build")
    if args.data_dir:
        os.environ.setdefault("NJET_DATA", str(args.data_dir))
    from .training.finetune import NonFiniteLossError

    try:
        result = _api(lambda: module.run_training(args, njet_model, original, stage), "fine-tuning")
    except NonFiniteLossError as err:  # diverged: the user's learning rate, not a bug
        raise UserError(f"fine-tuning diverged: {first_line(err)}") from None
    if result is not None and result.interrupted:  # --out keeps what it had; the checkpoint is for --resume
        signum = result.signal or signal.SIGINT
        raise Stopped(f"stopped by {signal.Signals(signum).name}: the model in {str(run.out)!r} was not replaced; "
                      f"continue with --resume {result.checkpoint}", 128 + signum)
    if result is not None:
        run.result["finetune"] = _jsonable(result)


def _jsonable(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return {k: v for k, v in dataclasses.asdict(value).items() if isinstance(v, int | float | str | list | dict)}
    return str(value)


def _write_run(run: _Run, njet_model: Any, original: Any, report: Any, example: Any) -> None:
    """Every output of the run (fine-tuning files, weights, config, reports, ONNX, manifest) goes into a temporary
    sibling of ``--out`` that replaces it whole at the end: on any failure ``--out`` keeps its previous result."""
    from .atomic import replace_folder
    from .serialization import write_manifest

    assert run.out is not None

    def keep(folder: Path) -> bool:  # an unfinished fine-tune's checkpoint stays resumable
        if not (folder / "checkpoint.pt").is_file():
            return False
        run.log(f"note: {run.out} is unchanged; the unfinished run's checkpoint is in {folder}/checkpoint.pt "
                f"(continue with --resume {folder})")
        return True

    try:
        with replace_folder(run.out, keep_on_error=keep) as stage:
            _finetune(run, njet_model, original, stage)
            _write_outputs(run, njet_model, report, stage)
            if run.args.export_onnx:
                _export(run, njet_model.eval(), example, stage)
            _writing(stage, lambda: write_manifest(stage))
    except OSError as err:  # the final swap
        raise UserError(f"cannot replace output directory {str(run.out)!r}: {err.strerror or err}") from None
    run.result["files"] = sorted(p.name for p in run.out.iterdir() if not p.name.startswith("."))


def _writing(stage: Path, write: Callable[[], Any]) -> None:
    try:
        write()
    except OSError as err:
        raise UserError(f"cannot write to output directory {str(stage.parent)!r}: {err.strerror or err}; its "
                        "previous contents are unchanged") from None


def _write_outputs(run: _Run, njet_model: Any, report: Any, stage: Path) -> None:
    from .serialization import write_model

    def write() -> None:
        write_model(njet_model, stage)
        (stage / "report.md").write_text(report.to_markdown() + "\n")
        (stage / "report.json").write_text(report.to_json() + "\n")

    _writing(stage, write)


def _export(run: _Run, njet_model: Any, example: Any, stage: Path) -> None:
    import njet_convert

    run.log("exporting ONNX and checking it against onnxruntime ...")
    result = _api(lambda: njet_convert.export_onnx(njet_model, stage / "model.onnx", example, verify=True),
                  "--export-onnx")
    checks = getattr(result, "checks", {})
    assert run.out is not None
    run.result["onnx"] = {"path": str(run.out / "model.onnx"), "max_relative_error": max(checks.values(), default=None)}


def _summary(run: _Run, report: Any) -> str:
    err = report.mean_fit_error
    fit = f", mean fit error {err:.4f}" if err == err else ""
    where = "dry run, nothing written" if run.args.dry_run else f"saved to {run.out}/"
    onnx = " + model.onnx" if "onnx" in run.result else ""
    from .config import describe_order

    fidelity = report.fidelity_summary()
    fidelity = f"; {fidelity}" if fidelity else ""
    return (f"{run.spec.name}: {len(report.layers)} conv(s) -> N-Jet (order {describe_order(run.args.order)}), "
            f"{len(report.subsampling)} subsampling point(s), params {report.params_before:,} -> "
            f"{report.params_after:,}{fit}{fidelity}{_macs(run.result.get('finetune'))} "
            f"[{run.result['weights'].split(':')[0]}]; {where}{onnx} ({run.result['seconds']:.1f} s)")


def _macs(finetuned: Any) -> str:
    """``, multiply-adds/image A -> B (fine-tuning)`` when fine-tuning measured them (σ moves the map sizes)."""
    values = [finetuned.get(k) if isinstance(finetuned, dict) else None
              for k in ("multiply_adds_before", "multiply_adds_after")]
    return "" if None in values else f", multiply-adds/image {values[0]:,} -> {values[1]:,} (fine-tuning)"


def _list_recipes(args: argparse.Namespace) -> int:
    from .recipes import list_recipes

    recipes = list_recipes()
    if args.json:
        print(json.dumps([r.to_dict() for r in recipes], indent=2))
        return 0
    width = max(len(r.name) for r in recipes) if recipes else 4
    for r in recipes:
        alias = f" (alias {', '.join(r.aliases)})" if r.aliases else ""
        print(f"{r.name:<{width}}  {r.model.name:<22} {r.description}{alias}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
