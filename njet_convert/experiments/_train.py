"""A small, self-contained training loop for the science experiments (classification and segmentation).

Kept separate from ``njet_convert.training`` on purpose: the experiments must run without it, on 2 CPU cores,
with fixed seeds. α (N-Jet basis weights) get L2 weight decay, σ's (``log_sigma``) get their own learning rate
and no decay, everything else is plain.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TrainConfig", "evaluate_accuracy", "make_optimizer", "seed_everything", "shuffled_batches", "train_epochs",
]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one run."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    sigma_lr: float | None = None  # default: lr
    weight_decay: float = 1e-4  # on α and conv weights; never on σ, biases or norms
    optimizer: str = "adam"  # adam | sgd (momentum 0.9, the paper's classification setting)
    seed: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD with three groups: σ (own lr, no decay), weights/α (decay), biases and norms (no decay)."""
    sigma, decay, plain = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("log_sigma"):
            sigma.append(p)
        elif p.ndim > 1:
            decay.append(p)
        else:
            plain.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": plain, "weight_decay": 0.0},
        {"params": sigma, "weight_decay": 0.0, "lr": cfg.sigma_lr if cfg.sigma_lr is not None else cfg.lr},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")


def train_epochs(
    model: nn.Module,
    batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    cfg: TrainConfig,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` for ``cfg.epochs``; ``batches(epoch)`` yields ``(input, target)`` pairs.

    A cosine learning-rate schedule over all steps; returns the last epoch's mean loss and the wall time.
    """
    opt = make_optimizer(model, cfg)
    start, total, steps = time.perf_counter(), 0.0, 0
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    model.train()
    for epoch in range(cfg.epochs):
        total, count = 0.0, 0
        for x, y in batches(epoch):
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total, count, steps = total + float(loss.detach()), count + 1, steps + 1
        if epoch == 0 and cfg.epochs > 1:  # cosine decay over the remaining epochs, now that steps/epoch is known
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, count * (cfg.epochs - 1)))
        total = total / max(count, 1)
        if on_epoch is not None:
            on_epoch(epoch, total)
    return {"loss": total, "seconds": time.perf_counter() - start, "steps": float(steps)}


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) of ``model`` on ``images [N, C, H, W]``."""
    model.eval()
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        correct += int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
    return 100.0 * correct / images.shape[0]


def shuffled_batches(images: Tensor, labels: Tensor, batch_size: int, seed: int) -> Callable[[int], Iterable]:
    """``batches(epoch)`` over a fixed tensor dataset, reshuffled per epoch from ``seed``."""

    def batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(0, images.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            yield images[idx], labels[idx]

    return batches

