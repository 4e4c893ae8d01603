"""How closely a converted network follows its original: top-1 agreement and KL(original ‖ converted).

Used by ``make demo``, ``benchmarks/fidelity.py`` and every calibrated conversion (its held-out slice, reported per
stage); the original's outputs are computed once and compared with every converted variant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["agreement", "logits", "stage_fidelity"]


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


@torch.no_grad()
def stage_fidelity(model: nn.Module, reference: Tensor, images: Tensor, batch_size: int = 32) -> dict[str, float]:
    """How closely ``model`` follows the original (its outputs ``reference``) on ``images``: top-1 agreement and
    KL(original ‖ model) for classifier logits ``[N, classes]``, else the relative squared output error."""
    if reference.dim() == 2:
        agree, kl = agreement(model, reference, images, batch_size)
        return {"images": int(images.shape[0]), "agreement": agree, "kl": kl}
    out = logits(model, images, batch_size).double()
    ref = reference.double()
    return {"images": int(images.shape[0]),
            "output_error": float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))}
