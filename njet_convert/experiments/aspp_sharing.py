"""Exp. 2B: DeepLab-v2 ASPP converted to N-Jet with α shared across the four branches.

``parameter_table`` counts the real modules next to the paper's Table 6. ``sigma_learning`` shows the four
per-branch σ's (initialised from the rates 6/12/18/24 as σ = rate / k) moving under training: a frozen
ImageNet MobileNetV2 backbone (offline weights) and the N-Jet ASPP head trained for a few Adam steps on
multi-scale Fashion-MNIST segmentation (our stand-in for Pascal VOC, which is not available offline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from njet_convert.data.multiscale_segmentation import IGNORE_INDEX, NUM_CLASSES, MultiScaleSegmentation
from njet_convert.models.aspp import ASPPHead, DeepLabV2, NJetASPPHead, aspp_parameter_count

from ._train import TrainConfig, make_optimizer, seed_everything
from .segmentation import class_weights

__all__ = ["parameter_table", "sigma_learning"]

_PAPER = {"DeepLabv2": 1_548_372, "DeepLabv2, weight sharing": 387_093, "N-Jet, order 3": 430_101,
          "N-Jet, order 2": 258_069, "N-Jet, order 1": 129_045}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() lists a tied α once


def parameter_table(in_channels: int = 2048, num_classes: int = 21) -> list[dict[str, object]]:
    """Rows ``{model, paper, ours, ours_paper_way}``; ``ours`` counts the built modules' parameters."""
    rows = [{"model": "DeepLabv2", "paper": _PAPER["DeepLabv2"], "ours": _count(ASPPHead(in_channels, num_classes)),
             "ours_paper_way": aspp_parameter_count(in_channels, num_classes)}]
    shared = aspp_parameter_count(in_channels, num_classes, shared=True)
    rows.append({"model": "DeepLabv2, weight sharing", "paper": _PAPER["DeepLabv2, weight sharing"], "ours": shared,
                 "ours_paper_way": shared})
    for order in (3, 2, 1):
        head = NJetASPPHead(in_channels, num_classes, order=order, share_alpha=True)
        rows.append({"model": f"N-Jet, order {order}", "paper": _PAPER[f"N-Jet, order {order}"], "ours": _count(head),
                     "ours_paper_way": aspp_parameter_count(in_channels, num_classes, order=order, shared=True,
                                                            count_sigma=False)})
    return rows


def sigma_learning(
    steps: int = 60, batch_size: int = 4, n_images: int = 32, seed: int = 0, sigma_lr: float = 0.01
) -> dict[str, object]:
    """Train the N-Jet ASPP head (order 3, shared α) on frozen MobileNetV2 features; σ per branch before/after."""
    seed_everything(seed)
    model = DeepLabV2(num_classes=NUM_CLASSES, backbone="mobilenet_v2", pretrained=True, njet_order=3)
    model.backbone.eval().requires_grad_(False)
    data = MultiScaleSegmentation("train", "multi", n_images, seed=seed)
    images = torch.stack([data[i][0] for i in range(n_images)])
    labels = torch.stack([data[i][1] for i in range(n_images)])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():  # frozen backbone: compute its features once
        feats = model.backbone((images.expand(-1, 3, -1, -1) - mean) / std)
    head: NJetASPPHead = model.head  # type: ignore[assignment]
    init = head.sigmas
    weights = class_weights(labels)
    opt = make_optimizer(head, TrainConfig(lr=1e-3, sigma_lr=sigma_lr, weight_decay=0.0))
    losses = []
    for step in range(steps):
        idx = torch.arange(step * batch_size, (step + 1) * batch_size) % n_images
        logits = F.interpolate(head(feats[idx]), size=images.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels[idx], weight=weights, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    branches = [{"rate": r, "sigma_init": s0, "sigma": s, "kernel_size": b.kernel_size}
                for r, s0, s, b in zip(head.rates, init, head.sigmas, head.branches, strict=True)]
    return {"branches": branches, "loss_first": losses[0], "loss_last": sum(losses[-5:]) / len(losses[-5:]),
            "alpha_shared": all(b.alpha is head.branches[0].alpha for b in head.branches)}
