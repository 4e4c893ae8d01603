"""The held-out slice of the calibration data: the last images, kept out of every fit, on which the conversion's
fidelity (top-1 agreement and KL with the original, :mod:`njet_convert.fidelity`) is measured per stage."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["holdout_size", "split_holdout"]


def holdout_size(images: int, fraction: float, minimum: int) -> int:
    """``ceil(fraction * images)``, at least ``minimum``, at most half of the images (0 when ``fraction`` is 0)."""
    if fraction <= 0 or images < 2:
        return 0
    return min(max(math.ceil(fraction * images), minimum), images // 2)


def split_holdout(data: Tensor | Iterable, fraction: float, minimum: int) -> tuple[Tensor | list[Tensor],
                                                                                  Tensor | None]:
    """``(fit data, held-out images)``: the last :func:`holdout_size` images are held out (``None``: none).

    A tensor is sliced; an iterable of batches (tensors or ``(tensor, label)``) is read once and given back as a
    list of the remaining batches (images of one size, as a DataLoader gives them).
    """
    if torch.is_tensor(data):
        held = holdout_size(data.shape[0], fraction, minimum)
        return (data, None) if held == 0 else (data[: data.shape[0] - held], data[data.shape[0] - held :])
    batches = [item[0] if isinstance(item, tuple | list) else item for item in data]
    held = holdout_size(sum(b.shape[0] for b in batches), fraction, minimum)
    if held == 0:
        return batches, None
    kept, parts, left = list(batches), [], held
    while left > 0:
        last = kept.pop()
        take = min(left, last.shape[0])
        parts.insert(0, last[last.shape[0] - take :])
        if take < last.shape[0]:
            kept.append(last[: last.shape[0] - take])
        left -= take
    return kept, torch.cat(parts)
