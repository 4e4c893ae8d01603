"""Fine-tuning of converted N-Jet networks: trainer, distillation, DDP under torchrun, checkpoints, metrics.

``finetune`` (also ``njet_convert.finetune``) is the entry point; ``python -m njet_convert.training`` runs it from
the command line (see :mod:`njet_convert.training.cli`).
"""

from .config import DistillConfig, FinetuneConfig
from .finetune import FinetuneResult, NonFiniteLossError, finetune

__all__ = ["DistillConfig", "FinetuneConfig", "FinetuneResult", "NonFiniteLossError", "finetune"]
