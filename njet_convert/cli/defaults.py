"""Option defaults of a run: the built-in ones, and a recipe's (explicit options still win; docs/design.md,
"Recipes")."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UserError
from .models import ModelSpec

__all__ = ["fill_defaults", "recipe_data", "recipe_defaults"]


def fill_defaults(args: argparse.Namespace) -> None:
    """The conversion options neither the command line nor a recipe set: the paper's values (the order is set once
    the weights are known: 'exact' for pretrained ones, 3 for a network built new)."""
    for key, value in (("k", 2.0), ("subsample", "safe"), ("r", 4.0), ("sigma", 1.0)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not hasattr(args, "finetune"):
        args.finetune = None


def recipe_data(args: argparse.Namespace, spec: ModelSpec) -> None:
    """``--finetune`` without DATA: the recipe's data section (dataset and image size)."""
    if getattr(args, "finetune", None) != "":
        return
    data = getattr(spec.recipe, "data", None)
    if data is None:
        raise UserError("--finetune without DATA needs a recipe with a data section; give --finetune DATA")
    args.finetune = data.dataset
    if data.image_size is not None:
        args.image_size = data.image_size


def recipe_defaults(recipe: Any, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Parser defaults from a recipe: conversion settings, and the training ones the parser has options for."""
    values: dict[str, Any] = {"order": recipe.convert.order, "k": recipe.convert.k,
                              "subsample": recipe.convert.subsample, "r": recipe.convert.r,
                              "sigma": recipe.convert.sigma}
    dests = {a.dest: a for a in parser._actions}
    train = recipe.train
    if train is not None:
        for key in ("optimizer", "lr", "alpha_decay", "weight_decay", "batch_size", "epochs", "milestones", "gamma",
                    "sigma_max_step"):
            if key in dests:
                values[key] = getattr(train, key)
        values["momentum"] = train.momentum  # no options of their own: read by config_from_args
        if train.betas is not None:
            values["betas"] = tuple(train.betas)
        schedule = dests.get("schedule")
        if schedule is not None and (not schedule.choices or train.schedule in schedule.choices):
            values["schedule"] = train.schedule
    return values
