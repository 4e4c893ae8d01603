"""Batch-norm helpers for calibration: find the norm that follows a conv, and re-estimate statistics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["output_distance", "outputs_distance", "reestimate_batchnorm"]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> None:
    """Recompute every BatchNorm's running mean/var on ``batches`` (cumulative average), leaving the mode as it was."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for m in norms:
            m.momentum = momenta[m]
        for m, mode in modes.items():
            m.train(mode)


@torch.no_grad()
def output_distance(model: nn.Module, batches: Iterable[Tensor], references: list[Tensor]) -> float | None:
    """Mean KL(reference ‖ model) of softmax outputs for 2-d logits, else relative squared error (None: no tensors)."""
    return outputs_distance((model(batch) for batch in batches), references)


def outputs_distance(outputs: Iterable, references: list[Tensor]) -> float | None:
    """:func:`output_distance` of outputs already computed (``None``: not tensors of the references' shapes)."""
    total, count = 0.0, 0
    for out, ref in zip(outputs, references, strict=False):
        if not torch.is_tensor(out) or out.shape != ref.shape:
            return None
        if out.dim() == 2:
            logp, logq = torch.log_softmax(ref.double(), -1), torch.log_softmax(out.double(), -1)
            total += float((logp.exp() * (logp - logq)).sum())
            count += out.shape[0]
        else:
            total += float((out.double() - ref.double()).pow(2).sum() / ref.double().pow(2).sum().clamp_min(1e-30))
            count += 1
    return total / max(count, 1)
