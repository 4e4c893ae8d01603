"""Evaluation of a model on labeled data, and the batch checks the training loop shares with it.

Top-1 accuracy and loss (and agreement with a teacher's arg-max) summed over every rank; labels outside the model's
classes are bad input (one ``ValueError`` line), not a CUDA assertion mid-epoch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import EpochLoader, split_batch
from .distill import teacher_logits
from .distributed import DistContext
from .metrics import top1_correct
from .precision import Precision

__all__ = ["check_labels", "evaluate", "labels_out_of_range", "logits_of", "to_device"]


def logits_of(output: Any) -> Tensor:
    """The logits of a model's output: a tensor, a dict's ``"out"`` (torchvision segmentation) or a tuple's first."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "out" in output:
        return output["out"]
    if isinstance(output, list | tuple) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(f"model output of type {type(output).__name__} is not logits (a tensor)")


def labels_out_of_range(y: Tensor, classes: int) -> bool:
    """Whether integer class labels fall outside ``0..classes-1`` (``-100``, cross-entropy's ignore index, is fine)."""
    return y.numel() > 0 and not y.is_floating_point() and bool(
        ((y >= classes) | ((y < 0) & (y != -100))).any())


def check_labels(y: Tensor, classes: int, what: str) -> None:
    """Raise one ``ValueError`` line when ``y`` holds labels the model cannot output."""
    if labels_out_of_range(y, classes):
        raise ValueError(f"{what}: labels out of range for a model with {classes} outputs (labels "
                         f"{int(y.min())}..{int(y.max())}; --num-classes too small?)")


def to_device(x: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    """``x`` on ``device`` (non-blocking), in channels-last layout when asked and 4-D."""
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: EpochLoader, ctx: DistContext, precision: Precision, teacher: nn.Module | None = None,
) -> dict[str, float]:
    """Top-1 accuracy and loss on labeled data, agreement with ``teacher``'s arg-max when given (all ranks)."""
    was_training = model.training
    model.eval()
    sums = [0.0] * 5  # correct, counted, loss_sum, agree, n
    try:
        for batch in loader.epoch(0):
            x, y = split_batch(batch)
            x = to_device(x, ctx.device)
            with precision.autocast():
                logits = logits_of(model(x)).float()
                ref = logits_of(teacher_logits(teacher, x)).float() if teacher is not None else None
            if y is not None:
                y = y.to(ctx.device)
                check_labels(y, logits.shape[1], "validation data")
                correct, counted = top1_correct(logits, y)
                sums[0] += correct
                sums[1] += counted
                sums[2] += float(F.cross_entropy(logits, y, reduction="sum"))
            if ref is not None:
                sums[3] += float((logits.argmax(1) == ref.argmax(1)).sum())
            sums[4] += logits.argmax(1).numel()
    finally:
        model.train(was_training)
    correct, counted, loss_sum, agree, n = ctx.sum(sums)
    out: dict[str, float] = {}
    if counted:
        out.update(acc=100.0 * correct / counted, loss=loss_sum / counted)
    if teacher is not None and n:
        out["agreement"] = 100.0 * agree / n
    return out
