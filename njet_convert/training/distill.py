"""Knowledge distillation: the converted network learns to reproduce the original network's outputs.

The loss is Hinton et al.'s: KL divergence between temperature-softened class distributions, scaled by T² so
its gradients keep their size when T changes, optionally mixed with the labels' cross-entropy. It needs no
labels, so a converted network can be fine-tuned on unlabeled images (an image folder, the calibration set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DistillConfig

__all__ = ["distillation_loss", "teacher_logits"]


def distillation_loss(
    student: Tensor, teacher: Tensor, labels: Tensor | None = None, config: DistillConfig | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """``(1 - w) · T² · KL(p_teacher ‖ p_student) + w · CE(student, labels)`` (``w = 0`` without labels).

    Logits of any shape ``[N, C, ...]`` (classes on dim 1, e.g. segmentation maps) are supported; computed in
    fp32 whatever the autocast dtype, since softmax of fp16 logits loses the small probabilities KL relies on.
    """
    config = config or DistillConfig()
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    t = config.temperature
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    per_item = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    kl = per_item.mean() * (t * t)
    weight = config.label_weight if labels is not None else 0.0
    if weight == 0.0:
        return kl
    ce = F.cross_entropy(student.float(), labels, label_smoothing=label_smoothing)
    return (1.0 - weight) * kl + weight * ce


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: Tensor) -> Tensor:
    """The teacher's outputs (eval mode, no gradient); its running statistics are never touched."""
    if teacher.training:
        teacher.eval()
    return teacher(images)
