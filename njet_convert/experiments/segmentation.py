"""Exp. 1.1B: U-Net baseline vs N-Jet U-Net (order 2) on multi-scale Fashion-MNIST segmentation, mIoU per
scale setting (homogeneous s = 1, 2, 4 and multi-scale s ∈ {1, 2, 3, 4}).

Loss: cross entropy weighted by inverse class frequencies of the training set, ignoring the undetermined pixels
(0 < h < 0.2), as in the paper. mIoU: over the ten object classes, intersections and unions summed over the
whole validation set (classes absent from both prediction and truth are skipped).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from njet_convert.data.fashion_mnist import load_fashion_mnist
from njet_convert.data.multiscale_segmentation import IGNORE_INDEX, NUM_CLASSES, MultiScaleSegmentation
from njet_convert.models.unet import UNet
from njet_layers import NJetConv2d

from ._train import TrainConfig, seed_everything, shuffled_batches, train_epochs

__all__ = ["SegmentationConfig", "class_weights", "mean_iou", "run", "summarize"]


@dataclass(frozen=True)
class SegmentationConfig:
    """Sizes of the experiment (the paper: width 64, 50 epochs, batch 1, lr 1e-4, 5 seeds)."""

    settings: tuple[str, ...] = ("s1", "s2", "s4", "multi")
    models: tuple[str, ...] = ("U-Net", "N-Jet U-Net (order 2)")
    seeds: tuple[int, ...] = (0,)
    n_train: int = 100
    n_val: int = 50
    width: int = 8
    object_size: int = 14  # CPU budget: Fashion-MNIST objects halved (the paper: 28)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=8, batch_size=4, lr=5e-3, weight_decay=0.0)
    )


def _materialize(ds: MultiScaleSegmentation) -> tuple[Tensor, Tensor]:
    pairs = [ds[i] for i in range(len(ds))]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]).to(torch.uint8)


def class_weights(labels: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """Inverse class frequencies (ignored pixels excluded), normalised to mean 1 over the classes present."""
    valid = labels[labels != IGNORE_INDEX].long()
    counts = torch.bincount(valid, minlength=num_classes).double()
    weights = torch.where(counts > 0, counts.sum() / counts.clamp(min=1), torch.zeros_like(counts))
    return (weights / weights[counts > 0].mean()).float()


@torch.no_grad()
def mean_iou(model: nn.Module, images: Tensor, labels: Tensor, num_classes: int = NUM_CLASSES) -> float:
    """mIoU (%) over the object classes 1..num_classes-1, ignoring :data:`IGNORE_INDEX` pixels."""
    model.eval()
    inter = torch.zeros(num_classes, dtype=torch.float64)
    union = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(images.shape[0]):
        pred = model(images[i : i + 1]).argmax(1)[0]
        truth = labels[i].long()
        keep = truth != IGNORE_INDEX
        p, t = pred[keep], truth[keep]
        for c in range(1, num_classes):
            inter[c] += ((p == c) & (t == c)).sum()
            union[c] += ((p == c) | (t == c)).sum()
    present = union[1:] > 0
    return float(100.0 * (inter[1:][present] / union[1:][present]).mean())


def _model(name: str, width: int) -> UNet:
    return UNet(width=width, njet_order=2 if name.startswith("N-Jet") else None)


def run(cfg: SegmentationConfig, log: bool = True) -> list[dict[str, object]]:
    """One row per (setting, model, seed): validation mIoU and the learned σ per N-Jet layer."""
    images, labels = load_fashion_mnist("train")
    val_images, val_labels = load_fashion_mnist("test")
    rows = []
    for setting in cfg.settings:
        x_tr, y_tr = _materialize(MultiScaleSegmentation("train", setting, cfg.n_train, seed=0, images=images,
                                                         labels=labels, object_size=cfg.object_size))
        x_va, y_va = _materialize(MultiScaleSegmentation("test", setting, cfg.n_val, seed=1, images=val_images,
                                                         labels=val_labels, object_size=cfg.object_size))
        weights = class_weights(y_tr)

        def loss_fn(logits: Tensor, target: Tensor, w: Tensor = weights) -> Tensor:
            return F.cross_entropy(logits, target.long(), weight=w, ignore_index=IGNORE_INDEX)

        for name in cfg.models:
            for seed in cfg.seeds:
                seed_everything(seed)
                model = _model(name, cfg.width)
                tcfg = TrainConfig(**{**cfg.train.__dict__, "seed": seed})
                stats = train_epochs(model, shuffled_batches(x_tr, y_tr, tcfg.batch_size, seed), tcfg, loss_fn)
                sigmas = [round(float(m.sigma.detach()), 3) for m in model.modules() if isinstance(m, NJetConv2d)]
                row = {"setting": setting, "model": name, "seed": seed, "miou": mean_iou(model, x_va, y_va),
                       "sigmas": sigmas, "size": x_tr.shape[-1], "seconds": stats["seconds"]}
                rows.append(row)
                if log:
                    print(f"  {setting} ({row['size']} px) {name} seed {seed}: mIoU {row['miou']:.2f}% "
                          f"sigma {sigmas} ({row['seconds']:.0f}s)", flush=True)
    return rows


def summarize(rows: list[dict[str, object]]) -> dict[tuple[str, str], tuple[float, float]]:
    """(setting, model) -> (mean, std) mIoU over seeds."""
    out = {}
    for key in dict.fromkeys((r["setting"], r["model"]) for r in rows):
        vals = [r["miou"] for r in rows if (r["setting"], r["model"]) == key]
        out[key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)  # type: ignore[arg-type]
    return out
