"""Calibration batches: re-iterable, checked, on the model's device; and which of them a stage reuses."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["CalibrationBatches", "batches_for", "first_outputs"]


class CalibrationBatches:
    """Re-iterable calibration batches on ``device`` from a tensor or an iterable of batches."""

    def __init__(self, data: Tensor | Iterable, batch_size: int, device: torch.device) -> None:
        self.device = device
        if torch.is_tensor(data):
            if data.dim() != 4 or not data.is_floating_point():
                raise ValueError(f"calibration data must be a float tensor [N, C, H, W], got {tuple(data.shape)} "
                                 f"{data.dtype}")
            self.source = [data[i : i + batch_size] for i in range(0, data.shape[0], batch_size)]
        elif isinstance(data, Iterable):
            self.source = data if iter(data) is not data else list(data)
        else:
            raise ValueError(f"calibration data must be a tensor or an iterable of batches, got {type(data).__name__}")

    def __iter__(self):
        for item in self.source:
            batch = item[0] if isinstance(item, tuple | list) else item
            if not torch.is_tensor(batch) or batch.dim() != 4 or not batch.is_floating_point():
                raise ValueError("each calibration batch must be a float tensor [B, C, H, W] or (tensor, label)")
            yield batch.to(self.device)

    def first(self) -> Tensor:
        """The first batch (``ValueError`` if there is none)."""
        for batch in self:
            return batch
        raise ValueError("calibration data is empty")

    def subset(self, n: int) -> list[Tensor]:
        """The first ``n`` images, batch by batch."""
        out, count = [], 0
        for batch in self:
            if count >= n:
                break
            out.append(batch[: n - count])
            count += out[-1].shape[0]
        return out


def batches_for(batches: list[Tensor], images: int) -> int:
    """How many leading batches hold the first ``images`` images."""
    count = 0
    for i, b in enumerate(batches):
        if count >= images:
            return i
        count += b.shape[0]
    return len(batches)


def first_outputs(outputs: list | None, sizes: list[int]) -> list | None:
    """The outputs of the first ``sizes`` images batch by batch (as :meth:`CalibrationBatches.subset` cuts them), or
    None."""
    if outputs is None or len(outputs) < len(sizes):
        return None
    out = []
    for o, n in zip(outputs, sizes, strict=False):
        if not torch.is_tensor(o) or o.shape[0] < n:
            return None
        out.append(o[:n])
    return out
