"""Fine-tuning of converted N-Jet networks: trainer, distillation, DDP under torchrun, checkpoints, metrics.

``finetune`` (also ``njet_convert.finetune``) is the entry point; ``python -m njet_convert.training`` runs it from
the command line (see :mod:`njet_convert.training.cli`).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import DistillConfig, FinetuneConfig

__all__ = ["DistillConfig", "FinetuneConfig", "FinetuneResult", "NonFiniteLossError", "finetune"]

_LAZY = ("FinetuneResult", "NonFiniteLossError", "finetune")  # imported on first use: they need torch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("njet_convert.training.finetune"), name)
    raise AttributeError(f"module 'njet_convert.training' has no attribute {name!r}")
