"""``njet-convert``: convert a CNN into an N-Jet network from the command line (DESIGN §5).

    njet-convert MODEL [--order 3] [--k 2] [--checkpoint PATH | --pretrained] [--out DIR] [--calibrate DATA]
                       [--finetune DATA --epochs E] [--distill] [--export-onnx] [--device auto|cpu|cuda]
                       [--dry-run] [--quiet] [--json]
    njet-convert --list-recipes

MODEL resolves in this order: a recipe (name, alias or YAML path), a timm name (the paper's zoo is registered in
timm), a torchvision name (``tv:`` prefix forces it), ``package.module:callable``. The output folder gets the
weights and config (:func:`njet_convert.save`), ``report.md`` and ``report.json``; the report table and a one-line
summary go to stdout, progress and notes to stderr. Bad input exits 2 with one line on stderr; an internal error
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
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import UserError

__all__ = ["ModelSpec", "build_parser", "main", "resolve_model"]

PROG = "njet-convert"
ISSUES = "https://github.com/njet/njet/issues"


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
                   help="N-Jet basis order (default 3, or the recipe's), or per-layer rules, first match wins: "
                        "e.g. depthwise=4,*=3 (kinds depthwise/grouped/dense/pointwise, name globs, re:regex) or JSON")
    g.add_argument("--k", type=_positive("--k"), help="filter extent in σ: size 2⌈kσ⌉+1 (default 2)")
    g.add_argument("--subsample", choices=("safe", "keep"), help="strides -> safe subsampling, or keep them")
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
    """A resolved MODEL: how to build it, how :func:`njet_convert.load` rebuilds it, and its recipe if any."""

    kind: str  # "timm", "torchvision" or "callable"
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: Any = None
    input_size: tuple[int, int, int] | None = None

    @property
    def source(self) -> dict[str, Any]:
        prefix = {"timm": "timm:", "torchvision": "torchvision:", "callable": ""}[self.kind]
        return {"name": prefix + self.name, "kwargs": dict(self.kwargs)}

    def build(self, pretrained: bool) -> Any:
        """The network (hub weights when ``pretrained``); UserError for what the user can fix."""
        if self.kind == "timm":
            import timm

            def make() -> Any:
                return timm.create_model(self.name, pretrained=pretrained, **self.kwargs)
        elif self.kind == "torchvision":
            import torchvision

            def make() -> Any:
                return torchvision.models.get_model(self.name, weights="DEFAULT" if pretrained else None, **self.kwargs)
        else:
            if pretrained:
                raise UserError(f"--pretrained works for timm and torchvision names, not {self.name!r}; "
                                "use --checkpoint PATH")
            fn = _import_callable(self.name)

            def make() -> Any:
                return fn(**self.kwargs)
        if not pretrained:
            return _api(make, f"building {self.name}")
        from .checkpoints import pretrained_or_exit

        host = "huggingface.co" if self.kind == "timm" else "download.pytorch.org"
        return _api(lambda: pretrained_or_exit(make, self.name, host), f"--pretrained {self.name}")


def _api(fn: Callable[[], Any], what: str) -> Any:
    """Run an API call; ValueError/TypeError (bad input by the API's contract) becomes a UserError."""
    try:
        return fn()
    except UserError:
        raise
    except (ValueError, TypeError) as err:
        raise UserError(f"{what}: {_one_line(err)}") from None
    except RuntimeError as err:
        if "pretrained" in str(err).lower() and "weights" in str(err).lower():
            raise UserError(f"{what}: {_one_line(err)}; use --checkpoint PATH") from None
        raise


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 400 else text[:397] + "..."


def _import_callable(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"cannot import {module_name!r} for MODEL {spec!r}: {_one_line(err)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"MODEL {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"MODEL {spec!r} is not callable")
    return obj


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def resolve_model(name: str, num_classes: int | None = None) -> ModelSpec:
    """Resolve MODEL (see the module doc); UserError with close matches when nothing fits."""
    from .recipes import find_recipe, load_recipe, recipe_names

    recipe = None
    if name.endswith((".yaml", ".yml")) or find_recipe(name) is not None:
        recipe = load_recipe(name)
        spec = _resolve_plain(recipe.model.name)
        spec.kwargs.update(recipe.model.kwargs)
        spec.recipe = recipe
        spec.input_size = tuple(recipe.model.input_size) if recipe.model.input_size else None  # type: ignore[assignment]
    else:
        spec = _resolve_plain(name)
        if spec is None:
            import timm

            pool = list(dict.fromkeys(recipe_names() + timm.list_models() + _torchvision_names()))
            close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see --list-recipes, timm.list_models()"
            raise UserError(f"unknown model {name!r}{hint}")
    if spec is None:
        raise UserError(f"recipe {name!r} names an unknown model {recipe.model.name!r}")  # type: ignore[union-attr]
    if num_classes is not None:
        spec.kwargs["num_classes"] = num_classes
    return spec


def _resolve_plain(name: str) -> ModelSpec | None:
    import timm

    if name.startswith("tv:") or name.startswith("torchvision:"):
        plain = name.split(":", 1)[1]
        if plain not in _torchvision_names():
            close = difflib.get_close_matches(plain, _torchvision_names(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown torchvision model {plain!r}{hint}")
        return ModelSpec("torchvision", plain)
    if name.startswith("timm:"):
        name = name[5:]
    if timm.is_model(name):
        return ModelSpec("timm", name)
    if name in _torchvision_names():
        return ModelSpec("torchvision", name)
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", name):
        _import_callable(name)
        return ModelSpec("callable", name)
    return None


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
    """Entry point of the ``njet-convert`` console script; returns the exit code (0, 1 internal, 2 bad input)."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except UserError as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        log = _write_traceback()
        print(f"{PROG}: internal error: {type(err).__name__}: {_one_line(err)} — the traceback is in {log}; "
              f"please report it at {ISSUES}", file=sys.stderr)
        return 1


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
    spec = resolve_model(args.model, args.num_classes)
    if spec.recipe is not None:  # recipe values become defaults; explicit options still win
        parser.set_defaults(**_recipe_defaults(spec.recipe, parser))
        args = parser.parse_args(argv)
    _fill_defaults(args)
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
    for key, value in (("order", 3), ("k", 2.0), ("subsample", "safe")):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not hasattr(args, "finetune"):
        args.finetune = None


def _recipe_defaults(recipe: Any, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Parser defaults from a recipe: conversion settings, and the training ones the parser has options for."""
    values: dict[str, Any] = {"order": recipe.convert.order, "k": recipe.convert.k,
                              "subsample": recipe.convert.subsample}
    dests = {a.dest: a for a in parser._actions}
    train = recipe.train
    if train is not None:
        for key in ("optimizer", "lr", "alpha_decay", "weight_decay", "batch_size", "epochs", "milestones", "gamma"):
            if key in dests:
                values[key] = getattr(train, key)
        schedule = dests.get("schedule")
        if schedule is not None and (not schedule.choices or train.schedule in schedule.choices):
            values["schedule"] = train.schedule
    return values


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(name).stem if name.endswith((".yaml", ".yml")) else name).strip("_") or "model"


def _prepare_out(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {path!r} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
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

    from .config import describe_order

    args, spec, log = run.args, run.spec, run.log
    start = time.perf_counter()
    if args.recover and not args.calibrate:
        raise UserError("--recover needs --calibrate DATA (it distils on the calibration images)")
    device = _device(args.device)
    model, weights = _load_model(run)
    input_size = args.input_size or spec.input_size or _cfg_input_size(model)
    model = model.to(device).eval()
    calibration = None
    if args.calibrate == "synthetic" and not args.dry_run:
        calibration = "synthetic"
    elif args.calibrate and not args.dry_run:
        calibration = _calibration(run, input_size).to(device)
    log(f"converting {spec.name} (order {describe_order(args.order)}, k {args.k:g}, subsample {args.subsample}"
        f"{', calibrated on ' + args.calibrate if calibration is not None else ''}) on {device} ...")
    options = {"progress": not args.quiet, "fit": not args.dry_run, "input_size": tuple(input_size)}
    if args.recover:
        options["recover"] = args.recover
    if spec.recipe is not None and (spec.recipe.convert.include or spec.recipe.convert.exclude):
        options.update(include=spec.recipe.convert.include, exclude=spec.recipe.convert.exclude)
    njet_model, report = _api(lambda: njet_convert.convert(model, order=args.order, k=args.k, subsample=args.subsample,
                                                           calibration=calibration, source=spec.source, **options),
                              "convert")
    njet_model.njet_conversion["input_size"] = list(input_size)  # for exporting the saved folder later
    example = torch.randn(2, *input_size, device=device)
    text = report.to_markdown()
    run.result.update(model=args.model, source=spec.source, recipe=getattr(spec.recipe, "name", None),
                      weights=weights, device=device, input_size=list(input_size), dry_run=args.dry_run,
                      out=str(run.out) if run.out else None, report=report.to_dict())
    if not args.dry_run:
        _finetune(run, njet_model, model)
        _write_outputs(run, njet_model, report)
        if args.export_onnx:
            _export(run, njet_model.eval(), example)
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
        "initialisation); converting it anyway")
    return model, "untrained"


def _cfg_input_size(model: Any) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(int(s) for s in size) if size else (3, 224, 224)  # type: ignore[return-value]


def _calibration(run: _Run, input_size: tuple[int, int, int]) -> Any:
    from .data.datasets import calibration_images

    run.log(f"loading {run.args.calibration_images} calibration images from {run.args.calibrate} ...")
    return calibration_images(run.args.calibrate, run.args.calibration_images, input_size,
                              data_dir=run.args.data_dir)


def _finetune(run: _Run, njet_model: Any, original: Any) -> None:
    args = run.args
    if not getattr(args, "finetune", None):
        return
    module = _training_cli()
    if module is None:
        raise UserError("--finetune: the fine-tuning module is not installed in this build")
    if args.data_dir:
        os.environ.setdefault("NJET_DATA", str(args.data_dir))
    result = _api(lambda: module.run_training(args, njet_model, original, run.out), "fine-tuning")
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


def _write_outputs(run: _Run, njet_model: Any, report: Any) -> None:
    import njet_convert

    assert run.out is not None
    try:
        njet_convert.save(njet_model, run.out)
        atomic_write_text(run.out / "report.md", report.to_markdown() + "\n")
        atomic_write_text(run.out / "report.json", report.to_json() + "\n")
    except OSError as err:
        raise UserError(f"cannot write to output directory {str(run.out)!r}: {err.strerror or err}") from None
    run.result["files"] = sorted(p.name for p in run.out.iterdir() if not p.name.startswith("."))


def _export(run: _Run, njet_model: Any, example: Any) -> None:
    import njet_convert

    assert run.out is not None
    run.log("exporting ONNX and checking it against onnxruntime ...")
    result = _api(lambda: njet_convert.export_onnx(njet_model, run.out / "model.onnx", example, verify=True),
                  "--export-onnx")
    checks = getattr(result, "checks", {})
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
            f"{report.params_after:,}{fit}{fidelity} [{run.result['weights'].split(':')[0]}]; {where}{onnx} "
            f"({run.result['seconds']:.1f} s)")


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
