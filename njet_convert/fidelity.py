"""How closely a converted network follows its original: top-1 agreement and KL(original ‖ converted).

Used by ``make demo`` and ``benchmarks/fidelity.py``; the original's outputs are computed once and compared with
every converted variant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["agreement", "logits"]


@torch.no_grad()
def logits(model: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
    """``model``'s eval-mode outputs on ``images``, batch by batch (the model's mode is restored)."""
    mode = model.training
    try:
        return torch.cat([model.eval()(chunk) for chunk in images.split(batch_size)])
    finally:
        model.train(mode)


def agreement(model: nn.Module, reference: Tensor, images: Tensor, batch_size: int = 32) -> tuple[float, float]:
    """Top-1 agreement (fraction) of ``model`` with the ``reference`` logits on ``images``, and the mean
    KL(reference ‖ model) of their softmax outputs."""
    p = torch.log_softmax(reference.double(), -1)
    q = torch.log_softmax(logits(model, images, batch_size).double(), -1)
    return float((p.argmax(-1) == q.argmax(-1)).double().mean()), float((p.exp() * (p - q)).sum(-1).mean())
