"""Small fine-tuning inputs shared by the training and exit-code tests: a separable toy task and a quiet config."""

from __future__ import annotations

import torch

from njet_convert.training import FinetuneConfig

__all__ = ["quiet_config", "toy_data"]


def toy_data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 1×6×6 inputs labelled by the sign of their mean."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return x, (x.mean((1, 2, 3)) > 0).long()


def quiet_config(**kw) -> FinetuneConfig:
    """Batches of 8, no progress bar, no plots."""
    return FinetuneConfig(batch_size=8, progress=False, plots=False, **kw)
