"""Divergence: a NaN/Inf loss, parameter or buffer stops the run, and the last good checkpoint is kept."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["NonFiniteLossError", "diverged_error", "first_nonfinite"]


class NonFiniteLossError(RuntimeError):
    """The run diverged: the training or validation loss, a parameter or a buffer (batch-norm statistics) became
    NaN or Inf. The run stopped and the last good checkpoint was kept (never overwritten by a diverged state)."""


def first_nonfinite(model: nn.Module) -> str | None:
    """The name of the first floating parameter or buffer holding NaN/Inf, or None (one fused check per tensor)."""
    tensors = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors])
    if bool(finite.all()):
        return None
    return tensors[int((~finite).nonzero()[0])][0]


def diverged_error(what: str, last_good: Path | None) -> NonFiniteLossError:
    """The error that stops a diverged run: what went wrong, which checkpoint is kept, what to change."""
    kept = (f"the last good checkpoint {str(last_good)!r} is kept" if last_good is not None
            else "no checkpoint had been written yet")
    return NonFiniteLossError(f"{what}; training stopped, {kept}. "
                              "Lower the learning rate (or sigma_lr), or set grad_clip.")
