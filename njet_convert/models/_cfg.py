"""Pretrained-config dicts for the zoo models (timm reads ``input_size``, ``mean``, ``std`` and ``architecture``)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "no_weights", "with_cfg", "zoo_cfg"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def zoo_cfg(architecture: str, num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32),
            **extra: Any) -> dict[str, Any]:
    """A timm-style ``pretrained_cfg`` for a zoo model without published weights (``url`` empty)."""
    cfg = {
        "architecture": architecture, "tag": "untrained", "url": "", "hf_hub_id": None, "num_classes": num_classes,
        "input_size": input_size, "fixed_input_size": False, "interpolation": "bilinear", "crop_pct": 1.0,
        "mean": CIFAR_MEAN if input_size[0] == 3 else (0.5,), "std": CIFAR_STD if input_size[0] == 3 else (0.5,),
        "first_conv": "stem.conv", "classifier": "fc",
    }
    cfg.update(extra)
    return cfg


def with_cfg(model: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    """Attach ``cfg`` as ``pretrained_cfg``/``default_cfg`` (what timm's own builders do) and return the model."""
    model.pretrained_cfg = dict(cfg)
    model.default_cfg = model.pretrained_cfg
    return model


def no_weights(name: str, pretrained: bool) -> None:
    """Raise ValueError for ``pretrained=True``: the zoo has no published weights (train or pass a checkpoint)."""
    if pretrained:
        raise ValueError(f"pretrained=True: {name} has no published weights; train it or load a checkpoint")
