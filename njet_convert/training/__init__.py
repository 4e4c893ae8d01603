"""Fine-tuning of converted N-Jet networks: trainer, distillation, DDP under torchrun, checkpoints, metrics.

``finetune`` (also ``njet_convert.finetune``) is the entry point; ``python -m njet_convert.training`` runs it from
the command line (see :mod:`njet_convert.training.cli`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from .config import DistillConfig, FinetuneConfig

__all__ = ["DistillConfig", "FinetuneConfig", "FinetuneResult", "NonFiniteLossError", "finetune"]

_LAZY = ("FinetuneResult", "NonFiniteLossError", "finetune")  # imported on first use: they need torch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("njet_convert.training.finetune"), name)
    raise AttributeError(f"module 'njet_convert.training' has no attribute {name!r}")


class _Package(types.ModuleType):
    """This package: importing the submodule ``finetune`` does not hide the function ``finetune`` (as when the
    package imported it eagerly, ``njet_convert.training.finetune`` is the function)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
