"""Parameter groups and learning-rate schedules of the paper's optimisation (SGD, momentum 0.9).

Four groups, because α, σ and the rest play different roles: α (the basis weights of every ``NJetConv2d``) take
the recipe's L2 weight (``alpha_decay``), σ (``log_sigma`` of ``NJetConv2d`` and of a ``SafeSubsample`` with its
own σ) learn at their own rate without decay, normalisation parameters and biases never decay (decay would fight
the normalisation), and all other weights (linear layers, convolutions left unconverted) use ``weight_decay``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from njet_layers import NJetConv2d, SafeSubsample

from .config import FinetuneConfig

__all__ = ["GROUP_NAMES", "build_optimizer", "build_scheduler", "lr_factor", "param_groups", "sigma_factor"]

GROUP_NAMES = ("alpha", "sigma", "no_decay", "decay")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, config: FinetuneConfig) -> list[dict]:
    """Trainable parameters split into the groups of :data:`GROUP_NAMES` (empty groups left out).

    Each group carries ``name``, ``lr`` and ``weight_decay``; every trainable parameter is in exactly one group.
    """
    buckets: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    seen: set[int] = set()
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            buckets[_group_of(module, pname, param)].append(param)
    settings = {
        "alpha": (config.lr, config.alpha_decay),
        "sigma": (config.sigma_lr if config.sigma_lr is not None else config.lr, config.sigma_decay),
        "no_decay": (config.lr, 0.0),
        "decay": (config.lr, config.weight_decay),
    }
    return [
        {"params": buckets[name], "name": name, "lr": settings[name][0], "weight_decay": settings[name][1]}
        for name in GROUP_NAMES
        if buckets[name]
    ]


def _group_of(module: nn.Module, pname: str, param: nn.Parameter) -> str:
    if isinstance(module, NJetConv2d | SafeSubsample) and pname == "log_sigma":
        return "sigma"
    if isinstance(module, NJetConv2d) and pname == "alpha":
        return "alpha"
    if isinstance(module, _NORMS) or pname == "bias" or param.ndim <= 1:
        return "no_decay"
    return "decay"


def build_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's classification runs) or Adam (its U-Net runs) over :func:`param_groups`,
    L2 as the optimiser's per-group ``weight_decay``."""
    groups = param_groups(model, config)
    if not groups:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=config.betas)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, config: FinetuneConfig) -> float:
    """Multiplier of every group's base lr at optimiser ``step`` (0-based): linear warm-up, then the schedule."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.warmup_start + (1.0 - config.warmup_start) * step / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.step_gamma ** (step // (steps_per_epoch * config.step_epochs))
    if config.schedule == "multistep":
        return config.step_gamma ** sum(step >= m * steps_per_epoch for m in config.milestones)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if config.schedule == "poly":
        return (1.0 - progress) ** config.poly_power
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, config: FinetuneConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :class:`~torch.optim.lr_scheduler.LambdaLR` following :func:`lr_factor`; the σ group is held at
    lr 0 for its first ``config.sigma_delay_epochs`` (:func:`sigma_factor`)."""
    def common(step: int) -> float:
        return lr_factor(step, steps_per_epoch, epochs, config)

    def sigma(step: int) -> float:
        return sigma_factor(step, steps_per_epoch, epochs, config)

    lambdas = [sigma if group.get("name") == "sigma" else common for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def sigma_factor(step: int, steps_per_epoch: int, epochs: int, config: FinetuneConfig) -> float:
    """Multiplier of the σ group's lr: 0 during the first ``sigma_delay_epochs``, then :func:`lr_factor`."""
    if step < round(config.sigma_delay_epochs * steps_per_epoch):
        return 0.0
    return lr_factor(step, steps_per_epoch, epochs, config)
