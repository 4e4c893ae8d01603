"""Command-line side of fine-tuning: the ``--finetune`` options of ``njet-convert`` and ``python -m
njet_convert.training``.

``add_training_arguments(parser)`` adds the options; ``run_training(args, model, teacher, out_dir)`` resolves the
data and runs :func:`~njet_convert.training.finetune.finetune`. Data are resolved by
:func:`njet_convert.data.resolve_dataset`: a dataset name (``njet_convert.data.dataset_names()``) or a folder of
images (class sub-folders → labeled, flat → unlabeled, for ``--distill``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .config import SCHEDULES, DistillConfig, FinetuneConfig

if TYPE_CHECKING:  # imported where used: adding the options (``--help``) must not import torch
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from .finetune import FinetuneResult

__all__ = ["add_training_arguments", "config_from_args", "resolve_data", "run_training"]



def add_training_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the fine-tuning options (``--finetune DATA --epochs E``, ``--distill``, ``--resume``, ...)."""
    g = parser.add_argument_group("fine-tuning")
    g.add_argument("--finetune", metavar="DATA", nargs="?", const="", help="fine-tune on DATA: a dataset name "
                   "(njet_convert.data.dataset_names()) or an image folder (class sub-folders, or flat and unlabeled "
                   "with --distill); without DATA after a recipe: the recipe's data")
    g.add_argument("--val", metavar="DATA", help="validation data (default: the test split of a named dataset)")
    g.add_argument("--epochs", type=int, default=1, help="epochs of fine-tuning (default 1)")
    g.add_argument("--distill", action="store_true", help="match the original network's outputs (KL)")
    g.add_argument("--distill-temperature", type=float, default=4.0, metavar="T")
    g.add_argument("--distill-label-weight", type=float, default=0.0, metavar="W",
                   help="mix in the labels' cross-entropy with weight W (0..1)")
    g.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (file or output folder)")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="SGD with momentum 0.9, or Adam")
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--sigma-lr", type=float, default=None, help="learning rate of σ (default: --lr)")
    g.add_argument("--sigma-delay-epochs", type=float, default=0.0, metavar="E",
                   help="hold σ for the first E epochs while α adapts to the new data or head (default 0)")
    g.add_argument("--sigma-max-step", type=float, default=FinetuneConfig.sigma_max_step, metavar="OCT",
                   help="the most any σ may move in one optimiser step, in octaves (default 0.02; 0: no bound)")
    g.add_argument("--resolution-search", action="store_true",
                   help="when σ is released, choose each stage's octave of σ and subsampling factor by the loss "
                        "(a converted network absorbing a zoom: docs/design.md)")
    g.add_argument("--search-batchnorm", choices=("running", "batch"), default="batch",
                   help="batch-norm statistics the search judges moves with: each batch's own as in training "
                        "(default), or the running ones, gathered at the old resolution")
    g.add_argument("--search-max-macs", type=_count, default=None, metavar="N",
                   help="compute budget of the resolution search: multiply-adds per training image (e.g. 12.5M); "
                        "per stage the move of lowest loss that fits")
    g.add_argument("--search-confidence", type=float, default=FinetuneConfig.search_confidence, metavar="Z",
                   help="standard errors of its per-example loss drop a move needs before the search takes it "
                        "over staying (default 2; 0: the mean alone decides)")
    g.add_argument("--factor-hold", type=float, default=FinetuneConfig.factor_hold, metavar="OCT",
                   help="hold each converted subsampling factor on its stride's grid (2, 4, 1 for stride 2) while "
                        "σ keeps it within OCT octaves (0..0.5, default 0.25; 0: the size law alone)")
    g.add_argument("--autotune", action="store_true",
                   help="N-Jet layers time their paths once per shape and keep the fastest (docs/layer.md)")
    g.add_argument("--alpha-decay", type=float, default=1e-4, help="L2 weight on α (paper: 1e-4..1e-2)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    g.add_argument("--milestones", type=int, nargs="+", metavar="EPOCH",
                   help="multistep schedule: epochs at which lr is multiplied by --gamma")
    g.add_argument("--gamma", type=float, default=0.1, help="lr factor of the step and multistep schedules")
    g.add_argument("--warmup-epochs", type=float, default=0.0)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    g.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="channels-last memory: auto = on CUDA only; on = every device (faster on CPU too)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds fine-tuning and the initialisation of an untrained network (default 0)")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return g


_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def _count(text: str) -> float:
    """A positive count with an optional k / M / G suffix (``12.5M``); ArgumentTypeError otherwise."""
    number, suffix = (text[:-1], text[-1].lower()) if text[-1:].isalpha() else (text, "")
    try:
        value = float(number) * _SUFFIXES[suffix]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a count such as 12.5M or 3e6, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive count, got {text!r}")
    return value


_CHANNELS_LAST: dict[str, bool | Literal["auto"]] = {"auto": "auto", "on": True, "off": False}


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from parsed options (ValueError names a bad value)."""
    distill = (DistillConfig(args.distill_temperature, args.distill_label_weight) if args.distill else None)
    return FinetuneConfig(
        optimizer=args.optimizer, lr=args.lr, sigma_lr=args.sigma_lr, alpha_decay=args.alpha_decay,
        sigma_delay_epochs=getattr(args, "sigma_delay_epochs", 0.0),
        sigma_max_step=getattr(args, "sigma_max_step", FinetuneConfig.sigma_max_step),
        resolution_search=getattr(args, "resolution_search", False),
        search_batchnorm=getattr(args, "search_batchnorm", "batch"),
        search_max_macs=getattr(args, "search_max_macs", None),
        search_confidence=getattr(args, "search_confidence", FinetuneConfig.search_confidence),
        factor_hold=getattr(args, "factor_hold", FinetuneConfig.factor_hold),
        autotune=getattr(args, "autotune", False),
        weight_decay=args.weight_decay, momentum=getattr(args, "momentum", 0.9),
        betas=tuple(getattr(args, "betas", None) or (0.9, 0.999)),
        schedule=args.schedule, milestones=tuple(args.milestones or ()), step_gamma=args.gamma,
        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, workers=args.workers,
        amp=args.amp, channels_last=_CHANNELS_LAST[getattr(args, "channels_last", "auto")], seed=args.seed,
        max_steps_per_epoch=args.max_steps_per_epoch, distill=distill,
        progress=not args.quiet, plots=not args.no_plots,
    )


def resolve_data(spec: str, split: str = "train", image_size: int | None = None) -> Dataset | Tensor:
    """A dataset from a name or a folder; ValueError for an unknown name, missing data or an unreadable folder."""
    from njet_convert.data.datasets import resolve_dataset

    return resolve_dataset(spec, split, image_size=image_size)


def run_training(
    args: argparse.Namespace, model: nn.Module, teacher: nn.Module | None, out_dir: str | Path | None,
    train_data: Any = None, val_data: Any = None,
) -> FinetuneResult | None:
    """Run the fine-tuning that ``args`` asks for (None when ``--finetune`` is not given).

    ``train_data``/``val_data`` override ``--finetune``/``--val`` (e.g. the calibration set the CLI already has).
    ``teacher`` is required with ``--distill``. Raises ValueError (the CLI turns it into exit code 2).
    """
    if not args.finetune and train_data is None:
        if args.resume:
            raise ValueError("--resume needs --finetune DATA (the data the run was trained on)")
        return None
    if args.distill and teacher is None:
        raise ValueError("--distill needs the original network as teacher")
    config = config_from_args(args)
    size = getattr(args, "image_size", None)  # a recipe's data.image_size
    if train_data is None:
        train_data = resolve_data(args.finetune, "train", size)
    if val_data is None and args.val is not None:
        val_data = resolve_data(args.val, "test", size)
    elif val_data is None and args.finetune is not None and not Path(args.finetune).exists():
        val_data = resolve_data(args.finetune, "test", size)  # a named dataset: its test split
    from .finetune import finetune

    return finetune(model, train_data, val_data, epochs=args.epochs, config=config,
                    teacher=teacher if args.distill else None, out_dir=out_dir, resume=args.resume)



